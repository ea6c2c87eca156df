package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/ctl"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

type running struct {
	srv    *Server
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, opts Options) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &running{srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		r.done <- nil
	case <-time.After(15 * time.Second):
		t.Error("server did not stop")
	}
}

func pinned(t *testing.T, dir string) *http.Client {
	pemData, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func runCtl(t *testing.T, cfg ctl.Config, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cfg.Out = &out
	if err := ctl.Run(context.Background(), cfg, args); err != nil {
		t.Fatalf("ctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// TestServer starts a controller with its own CA, drives it with ctl over
// pinned TLS, enrols an appliance and checks the shutdown order.
func TestServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := start(t, Options{Listen: "127.0.0.1:0", DataDir: dir, TLSHosts: []string{"127.0.0.1"}})
	tokPath := filepath.Join(dir, OperatorTokenFile)
	fi, err := os.Stat(tokPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap token file: %v, %v", fi, err)
	}
	tok, _ := os.ReadFile(tokPath)
	cfg := ctl.Config{Server: r.srv.URL(), Token: strings.TrimSpace(string(tok)), CAFile: filepath.Join(dir, CAFile)}

	runCtl(t, cfg, "tenant", "create", "acme")
	runCtl(t, cfg, "site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.1.0.0/24", "--prefix", "fd00:1::/64")
	if out := runCtl(t, cfg, "site", "list", "acme"); !strings.Contains(out, "10.1.0.0/24,fd00:1::/64") {
		t.Errorf("site list:\n%s", out)
	}
	err = ctl.Run(context.Background(), cfg, []string{"site", "create", "acme", "br", "--kind", "home", "--prefix", "10.1.0.0/16"})
	if err == nil || !strings.Contains(err.Error(), `lan_prefixes[0]: 10.1.0.0/16 overlaps 10.1.0.0/24 of site "hq"`) {
		t.Errorf("overlapping site: %v", err)
	}
	if err := ctl.Run(context.Background(), cfg, []string{"site", "frobnicate"}); !ctl.IsUsage(err) {
		t.Errorf("unknown command: %v", err)
	}
	var et struct{ Token string }
	json.Unmarshal([]byte(runCtl(t, cfg, "token", "create", "acme", "--site", "hq", "--ttl", "5m")), &et)

	// Enrol over pinned TLS, as an appliance would.
	hc := pinned(t, dir)
	k, _ := wgkey.NewPrivate()
	body, _ := json.Marshal(map[string]any{"token": et.Token, "public_key": k.Public().String()})
	res, err := hc.Post(r.srv.URL()+"/api/v1/enroll", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var enrolled struct {
		Credential string
		Netmap     struct{ Version uint64 }
	}
	json.NewDecoder(res.Body).Decode(&enrolled)
	res.Body.Close()
	if res.StatusCode != 201 || enrolled.Credential == "" {
		t.Fatalf("enroll: %d", res.StatusCode)
	}
	if out := runCtl(t, cfg, "appliance", "netmap", "acme", "hq-1"); !strings.Contains(out, `"overlay_addr": "100.64.0.1"`) {
		t.Errorf("netmap:\n%s", out)
	}
	if out := runCtl(t, cfg, "appliance", "list", "acme"); !strings.Contains(out, "hq-1") {
		t.Errorf("appliance list:\n%s", out)
	}
	// An untrusting client is refused.
	if _, err := http.Get(r.srv.URL() + "/healthz"); err == nil {
		t.Error("TLS accepted by a client that does not pin the CA")
	}

	// A sync waiting at shutdown is answered at once (503), so shutdown does
	// not wait out the long-poll.
	req, _ := http.NewRequest("GET", r.srv.URL()+"/api/v1/sync?wait=60s&since="+string(mustJSON(enrolled.Netmap.Version)), nil)
	req.Header.Set("Authorization", "Bearer "+enrolled.Credential)
	got := make(chan int, 1)
	go func() {
		res, err := hc.Do(req)
		if err != nil {
			got <- -1
			return
		}
		res.Body.Close()
		got <- res.StatusCode
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r.srv.state.Hub().Connected() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stopped := time.Now()
	r.stop(t)
	if code := <-got; code != http.StatusServiceUnavailable {
		t.Errorf("waiting sync at shutdown got %d", code)
	}
	if d := time.Since(stopped); d > 3*time.Second {
		t.Errorf("shutdown took %s", d)
	}

	// A restart keeps the CA and makes no second bootstrap token.
	before, _ := os.ReadFile(filepath.Join(dir, CAFile))
	os.Remove(tokPath)
	r2 := start(t, Options{Listen: "127.0.0.1:0", DataDir: dir, TLSHosts: []string{"127.0.0.1"}})
	after, _ := os.ReadFile(filepath.Join(dir, CAFile))
	if !bytes.Equal(before, after) {
		t.Error("restart replaced the CA")
	}
	if _, err := os.Stat(tokPath); err == nil {
		t.Error("restart wrote a second bootstrap token")
	}
	cfg.Server = r2.srv.URL()
	if out := runCtl(t, cfg, "tenant", "list"); !strings.Contains(out, "acme") {
		t.Errorf("after restart:\n%s", out)
	}
}

// TestServerReplicas runs two controllers on one PostgreSQL database: a
// change through one reaches a sync held by the other within a second.
func TestServerReplicas(t *testing.T) {
	t.Parallel()
	dsn := storetest.PostgresDSN(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := start(t, Options{Listen: "127.0.0.1:0", DataDir: dirA, DB: dsn, TLS: TLSOff})
	b := start(t, Options{Listen: "127.0.0.1:0", DataDir: dirB, DB: dsn, TLS: TLSOff})
	tokA, errA := os.ReadFile(filepath.Join(dirA, OperatorTokenFile))
	tokB, errB := os.ReadFile(filepath.Join(dirB, OperatorTokenFile))
	if (errA == nil) == (errB == nil) {
		t.Fatalf("want exactly one bootstrap token between the replicas: %v, %v", errA, errB)
	}
	tok := strings.TrimSpace(string(tokA) + string(tokB))
	cfg := ctl.Config{Server: a.srv.URL(), Token: tok}
	runCtl(t, cfg, "tenant", "create", "acme")
	runCtl(t, cfg, "site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.1.0.0/24")
	runCtl(t, cfg, "site", "create", "acme", "br", "--kind", "office", "--prefix", "10.2.0.0/24")
	var et struct{ Token string }
	json.Unmarshal([]byte(runCtl(t, cfg, "token", "create", "acme", "--site", "hq")), &et)
	k, _ := wgkey.NewPrivate()
	body, _ := json.Marshal(map[string]any{"token": et.Token, "public_key": k.Public().String()})
	// Enrol through A, sync through B.
	res, err := http.Post(a.srv.URL()+"/api/v1/enroll", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var enrolled struct {
		Credential string
		Netmap     struct{ Version uint64 }
	}
	json.NewDecoder(res.Body).Decode(&enrolled)
	res.Body.Close()
	sync := func(since uint64) (int, map[string]any) {
		req, _ := http.NewRequest("GET", b.srv.URL()+"/api/v1/sync?wait=5s&since="+strings.TrimSpace(string(mustJSON(since))), nil)
		req.Header.Set("Authorization", "Bearer "+enrolled.Credential)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, nil
		}
		defer res.Body.Close()
		var m map[string]any
		json.NewDecoder(res.Body).Decode(&m)
		return res.StatusCode, m
	}
	code, first := sync(0)
	if code != 200 || uint64(first["version"].(float64)) != enrolled.Netmap.Version {
		t.Fatalf("first sync through the other replica: %d %v", code, first)
	}
	type result struct {
		code int
		m    map[string]any
		at   time.Time
	}
	ch := make(chan result, 1)
	go func() {
		c, m := sync(enrolled.Netmap.Version)
		ch <- result{c, m, time.Now()}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for b.srv.state.Hub().Connected() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	changed := time.Now()
	runCtl(t, cfg, "site", "update", "acme", "hq", "--prefix", "10.1.0.0/24", "--prefix", "10.1.1.0/24")
	res2 := <-ch
	if lag := res2.at.Sub(changed); res2.code != 200 || lag > time.Second {
		t.Fatalf("change through A reached B's sync: %d after %s", res2.code, lag)
	}
	if ps := res2.m["lan_prefixes"].([]any); len(ps) != 2 {
		t.Errorf("netmap from B: %v", res2.m)
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }
