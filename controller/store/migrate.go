package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// migrations holds the versioned schema, shared by both engines.
//
//go:embed migrations/*.sql
var migrations embed.FS

func (s *Store) provider(ctx context.Context) (*goose.Provider, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	dialect := goose.DialectSQLite3
	// Migrations are written independent of each other and numbered as
	// they are merged, so a database may have run a later one before an
	// earlier one existed: it gets the earlier one too.
	opts := []goose.ProviderOption{goose.WithDisableGlobalRegistry(true), goose.WithAllowOutofOrder(true)}
	if s.engine == Postgres {
		dialect = goose.DialectPostgres
		// Two replicas starting together must not both migrate.
		id, err := schemaLockID(ctx, s.rw)
		if err != nil {
			return nil, err
		}
		locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(id), lock.WithLockTimeout(1, 300))
		if err != nil {
			return nil, err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	return goose.NewProvider(dialect, s.rw, sub, opts...)
}

func (s *Store) migrate(ctx context.Context) error {
	p, err := s.provider(ctx)
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("store: migrating: %w", err)
	}
	return nil
}

// SchemaVersion reports the version of the newest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	p, err := s.provider(ctx)
	if err != nil {
		return 0, err
	}
	return p.GetDBVersion(ctx)
}

// migrateDownTo is for tests of the down migrations.
func (s *Store) migrateDownTo(ctx context.Context, version int64) error {
	p, err := s.provider(ctx)
	if err != nil {
		return err
	}
	_, err = p.DownTo(ctx, version)
	return err
}
