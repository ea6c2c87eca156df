package bench

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Rounds != DefaultRounds || o.Duration != DefaultDuration || o.Omit != 0 || len(o.Streams) != 2 ||
		o.Pings != DefaultPings || o.PingInterval != DefaultPingInterval || o.Path != LabPath {
		t.Errorf("defaults: %+v", o)
	}
}

func TestOptionsInvalid(t *testing.T) {
	for name, o := range map[string]Options{
		"rounds":          {Rounds: -1},
		"fractional time": {Duration: 1500 * time.Millisecond},
		"negative omit":   {Omit: -time.Second},
		"no streams":      {Streams: []int{}},
		"zero streams":    {Streams: []int{1, 0}},
		"few pings":       {Pings: 3},
		"fast pings":      {PingInterval: time.Millisecond},
		"partial path":    {Path: Path{Client: "a"}},
	} {
		if _, err := o.withDefaults(); err == nil {
			t.Errorf("%s: %+v accepted", name, o)
		}
	}
}

func TestStockIface(t *testing.T) {
	a, b := stockIface("cw-bench-office-1"), stockIface("cw-bench-vpc-1")
	if a == b || a != stockIface("cw-bench-office-1") || stockIface("cw-other-office-1") == a {
		t.Errorf("names not unique per namespace: %s %s", a, b)
	}
	for _, n := range []string{a, b} {
		if len(n) > 15 || !strings.HasPrefix(n, "wgref") {
			t.Errorf("%q: want wgref... of at most 15 bytes", n)
		}
	}
}

func TestFindModuleRoot(t *testing.T) {
	wd, _ := os.Getwd()
	root, err := findModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Dir(filepath.Dir(wd)); root != want {
		t.Errorf("root %s, want %s", root, want)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("// other\nmodule example.com/other\n"), 0o644)
	if _, err := findModuleRoot(dir); err == nil {
		t.Error("a tree with another module's go.mod: want an error")
	}
}

// buildStock must build the daemon from the wireguard-go version go.mod
// pins, and linkedWireGuard must read that version back from the binary.
func TestBuildStockVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds wireguard-go")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(wireguardModule) + ` (\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatalf("go.mod does not require %s", wireguardModule)
	}
	want := string(m[1])
	bin, err := buildStock(context.Background(), "", t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := linkedWireGuard(bin); err != nil || got != want {
		t.Errorf("linkedWireGuard(stock) = %q, %v; want go.mod's %q", got, err, want)
	}
	if _, err := linkedWireGuard(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing binary: want an error")
	}
}
