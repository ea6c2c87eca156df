// Package store is the controller's database: one schema and one set of
// queries over two engines, SQLite (embedded, the default) and PostgreSQL
// (for replicated controllers).
//
// All access goes through Read and Write, which run a function inside a
// transaction. Business rules live in the state package; this package only
// maps rows to the types in types.go.
//
// Writes are serialised: SQLite has a single writer by nature, and on
// PostgreSQL every write transaction first takes a transaction-scoped
// advisory lock. Control-plane writes are rare, and serialising them buys two
// things: rules that read then write (prefix overlap, address allocation)
// need no retry loop, and change-feed ids (see changes.go) commit in order,
// so a replica that has seen change N has seen every change before it.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"modernc.org/sqlite"               // also registers the "sqlite" driver
)

// Engine names a database engine.
type Engine string

const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

// Errors returned (wrapped) by store methods.
var (
	// ErrNotFound means the row asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means a uniqueness or reference constraint refused the
	// write. State checks its rules first, so this is a backstop.
	ErrConflict = errors.New("constraint violation")
)

// Store is an open database. It is safe for concurrent use.
type Store struct {
	engine Engine
	// rw takes the writes. For SQLite it holds a single connection whose
	// transactions begin IMMEDIATE; ro serves reads. For PostgreSQL both are
	// the same pool.
	rw, ro *sql.DB
}

// Options tunes Open. The zero value is fine.
type Options struct {
	// MaxConns bounds the PostgreSQL pool (and the SQLite read pool).
	// 0 means 10.
	MaxConns int
}

// IsPostgresDSN reports whether dsn names a PostgreSQL database rather than
// an SQLite file.
func IsPostgresDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens the database named by dsn and brings its schema up to date.
// dsn is a postgres:// or postgresql:// URL, or otherwise the path of an
// SQLite file (created if missing, run in WAL mode).
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if opts.MaxConns <= 0 {
		opts.MaxConns = 10
	}
	var s *Store
	var err error
	if IsPostgresDSN(dsn) {
		s, err = openPostgres(ctx, dsn, opts)
	} else {
		s, err = openSQLite(ctx, dsn, opts)
	}
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func openSQLite(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty database path")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("store: SQLite path %q must not contain '?' or '#'", path)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	base := "file:" + path + "?" + q.Encode()
	rw, err := sql.Open("sqlite", base+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	rw.SetMaxOpenConns(1)
	ro, err := sql.Open("sqlite", base)
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	ro.SetMaxOpenConns(opts.MaxConns)
	s := &Store{engine: SQLite, rw: rw, ro: ro}
	// The first connection creates the file and switches it to WAL.
	if err := rw.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	return s, nil
}

func openPostgres(ctx context.Context, dsn string, opts Options) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: opening PostgreSQL: %w", err)
	}
	db.SetMaxOpenConns(opts.MaxConns)
	db.SetMaxIdleConns(opts.MaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connecting to PostgreSQL: %w", err)
	}
	return &Store{engine: Postgres, rw: db, ro: db}, nil
}

// Engine reports which engine the store runs on.
func (s *Store) Engine() Engine { return s.engine }

// Ping checks that the database answers; /readyz uses it.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.ro.PingContext(ctx); err != nil {
		return err
	}
	_, err := s.ro.ExecContext(ctx, "SELECT 1")
	return err
}

// Close closes the database.
func (s *Store) Close() error {
	err := s.rw.Close()
	if s.ro != s.rw {
		err = errors.Join(err, s.ro.Close())
	}
	return err
}

// Tx is one transaction. Its methods are the queries; it must not be used
// after the function given to Read or Write returns.
type Tx struct {
	tx     *sql.Tx
	engine Engine
	write  bool
}

// Read runs fn in a read-only transaction that sees one consistent
// snapshot.
func Read[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var zero T
	opts := &sql.TxOptions{ReadOnly: true}
	if s.engine == Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.ro.BeginTx(ctx, opts)
	if err != nil {
		return zero, fmt.Errorf("store: begin: %w", err)
	}
	defer tx.Rollback()
	v, err := fn(&Tx{tx: tx, engine: s.engine})
	if err != nil {
		return zero, err
	}
	if err := tx.Commit(); err != nil {
		return zero, fmt.Errorf("store: commit: %w", err)
	}
	return v, nil
}

// Write runs fn in a read-write transaction and commits it if fn returns
// no error. Writes are serialised (see the package comment).
func Write[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var zero T
	tx, err := s.rw.BeginTx(ctx, nil)
	if err != nil {
		return zero, fmt.Errorf("store: begin: %w", err)
	}
	defer tx.Rollback()
	if s.engine == Postgres {
		// One lock per schema, so that databases sharing a server (tests,
		// or several deployments) do not wait on each other.
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext(current_schema()))"); err != nil {
			return zero, fmt.Errorf("store: taking the write lock: %w", err)
		}
	}
	v, err := fn(&Tx{tx: tx, engine: s.engine, write: true})
	if err != nil {
		return zero, err
	}
	if err := tx.Commit(); err != nil {
		return zero, fmt.Errorf("store: commit: %w", mapErr(err))
	}
	return v, nil
}

func (t *Tx) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	r, err := t.tx.ExecContext(ctx, query, args...)
	return r, mapErr(err)
}

func (t *Tx) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	r, err := t.tx.QueryContext(ctx, query, args...)
	return r, mapErr(err)
}

func (t *Tx) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, query, args...)
}

// mustAffect turns "no row changed" into ErrNotFound.
func mustAffect(r sql.Result, err error, what string) error {
	if err != nil {
		return err
	}
	n, err := r.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// mapErr wraps constraint violations of either engine in ErrConflict.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "23503") {
		return fmt.Errorf("%w: %s", ErrConflict, pe.Message)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case 2067, 1555, 787: // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY, _FOREIGNKEY
			return fmt.Errorf("%w: %s", ErrConflict, se.Error())
		}
	}
	return err
}

// schemaLockID derives the migration lock id from the current schema, for
// the same reason Write's lock is per schema.
func schemaLockID(ctx context.Context, db *sql.DB) (int64, error) {
	var schema string
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return 0, err
	}
	h := fnv.New64a()
	h.Write([]byte("causeway-migrate:" + schema))
	return int64(h.Sum64() >> 1), nil
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
