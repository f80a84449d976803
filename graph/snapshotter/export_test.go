package snapshotter

// UsesOf is usesOf, for the tests of package snapshotter_test.
var UsesOf = usesOf
