package main

import (
	"context"
	"errors"
)

// Placeholders, each replaced by its own file as the feature lands.
var errNotYet = errors.New("not implemented yet")

func runServe(ctx context.Context, env *environment, args []string) error { return errNotYet }
