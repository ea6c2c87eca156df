package lab

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testBinary is the causeway binary built by TestMain for the tests that
// build labs; "" when not running as root.
var testBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "causeway-lab-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if testBinary, err = buildCauseway(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Leftovers of crashed earlier runs; live instances stay.
		if err := Sweep(DefaultStateRoot, nil); err != nil {
			fmt.Fprintln(os.Stderr, "sweeping stale lab instances:", err)
		}
	}
	return m.Run()
}

// buildCauseway builds ./cmd/causeway of this module into dir, static, as
// CI and releases build it.
func buildCauseway(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "causeway")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/causeway")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building causeway: %v\n%s", err, out)
	}
	return bin, nil
}

// needRoot skips a test that builds namespaces when not root, except in
// CI, where the tests must really run.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the lab tests need root, and CI runs as root")
	}
	t.Skip("needs root")
}

// testLogger sends log lines to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}
