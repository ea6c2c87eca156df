package store

import "context"

// MigrateDownTo exposes the down migrations to the tests.
var MigrateDownTo = (*Store).migrateDownTo

// Exec runs one statement outside the typed queries, to set up old data.
func Exec(s *Store, ctx context.Context, query string, args ...any) error {
	_, err := s.rw.ExecContext(ctx, query, args...)
	return err
}
