package store

// MigrateDownTo exposes the down migrations to the tests.
var MigrateDownTo = (*Store).migrateDownTo
