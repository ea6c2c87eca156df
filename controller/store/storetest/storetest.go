// Package storetest gives tests real, throw-away databases of both engines.
//
// PostgreSQL comes from the server named by CAUSEWAY_TEST_POSTGRES_DSN; each
// call makes a fresh schema on it and drops it when the test ends, so tests
// may run in parallel. Without that variable the PostgreSQL cases are
// skipped, or fail when CI=true.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
)

// EnvPostgres names the variable holding the PostgreSQL server's DSN.
const EnvPostgres = "CAUSEWAY_TEST_POSTGRES_DSN"

// Engines runs fn once per engine, as subtests named "sqlite" and
// "postgres", each with the DSN of a fresh, empty database.
func Engines(t *testing.T, fn func(t *testing.T, dsn string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLiteDSN(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, PostgresDSN(t)) })
}

// SQLiteDSN returns the path of a fresh SQLite database in t.TempDir().
func SQLiteDSN(t testing.TB) string {
	return filepath.Join(t.TempDir(), "causeway.db")
}

// PostgresDSN returns the DSN of a fresh schema on the test server, dropped
// at the end of the test. Open it twice to get two replicas of one database.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	base, ok := os.LookupEnv(EnvPostgres)
	if !ok || base == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set; CI must provide a PostgreSQL server", EnvPostgres)
		}
		t.Skipf("%s is not set; skipping the PostgreSQL case", EnvPostgres)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "cwtest_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("opening %s: %v", EnvPostgres, err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("creating schema: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", base)
		if err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
			return
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parsing %s: %v", EnvPostgres, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Open opens (and migrates) the database at dsn, closing it when the test
// ends.
func Open(t testing.TB, dsn string) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := store.Open(ctx, dsn, store.Options{MaxConns: 4})
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
