package rbdstore

import (
	"reflect"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The reopener stands in for an rbdio.Image in front of nbd: every
// optional ability the image has must pass through it, or nbd silently
// serves less (block status was lost that way: every extent reported as
// data).
func TestReopenerKeepsTheImagesAbilities(t *testing.T) {
	abilities := []reflect.Type{
		reflect.TypeFor[nbd.Discarder](),
		reflect.TypeFor[nbd.ZeroWriter](),
		reflect.TypeFor[nbd.FUAWriter](),
		reflect.TypeFor[nbd.NonBlocking](),
		reflect.TypeFor[nbd.AsyncBackend](),
		reflect.TypeFor[nbd.Resizer](),
		reflect.TypeFor[nbd.Extenter](),
	}
	image, wrapper := reflect.TypeFor[*rbdio.Image](), reflect.TypeFor[*Reopener]()
	for _, a := range abilities {
		if image.Implements(a) && !wrapper.Implements(a) {
			t.Errorf("rbdio.Image is an %v but the reopener in front of it is not", a)
		}
	}
}
