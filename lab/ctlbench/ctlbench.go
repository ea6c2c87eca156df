// Package ctlbench benchmarks the controller's control plane: how long one
// change that touches every appliance takes to be applied by all of them,
// and what it costs the controller.
//
// Run builds (or is given) the causeway binary, starts `causeway controller`
// as a child process on 127.0.0.1 with TLS off and a throw-away database,
// enrols N appliances through the API (keys generated here), and runs N
// simulated appliances: control-plane clients only, each holding one sync
// long-poll like a real appliance and applying what arrives by decoding and
// validating it with the netmap package. Then it makes the change a number
// of times (each time: one more appliance enrols, so every appliance gets
// a new peer) and measures, from the API call's start, when each simulated
// appliance applied a netmap at or past the change's version, together with
// the controller process's CPU time (/proc/<pid>/stat) and peak resident
// set (VmHWM in /proc/<pid>/status). See docs/benchmarks-control.md.
package ctlbench

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, for a throw-away schema

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Defaults for Options.
const (
	DefaultAppliances  = 1000
	DefaultChanges     = 5
	DefaultConcurrency = 32
	DefaultSyncWait    = 30 * time.Second
	DefaultTimeout     = 2 * time.Minute
	DefaultLogLevel    = "info"
)

// Sync modes: how the simulated appliances ask for netmaps.
const (
	// SyncDelta asks for deltas (?delta=1); the controller answers with
	// one when it can, else with the full netmap.
	SyncDelta = "delta"
	// SyncFull always gets full netmaps, as an appliance that does not ask
	// for deltas does.
	SyncFull = "full"
)

// Options configures Run. Appliances must be at least 2; zero values of
// the others mean their defaults.
type Options struct {
	// Appliances is N, the number of simulated appliances.
	Appliances int
	// Sites is how many sites there are. A site holds at most two
	// appliances (a pair), and each change enrols an appliance into a site
	// of its own (so that the change is one new peer and nothing else): at
	// least Appliances/2 (rounded up) + Changes. 0 means that many.
	Sites int
	// DB is "" or "sqlite" for SQLite in the temporary data directory, or
	// a postgres:// DSN, in which the benchmark creates a schema of its
	// own and drops it at the end.
	DB string
	// Changes is how many times the change is made and measured.
	Changes int
	// Sync is SyncDelta (the default) or SyncFull.
	Sync string
	// Binary is the causeway binary to run as the controller; "" builds
	// ./cmd/causeway of the source tree holding the working directory,
	// with CGO_ENABLED=0, into the temporary directory.
	Binary string
	// Concurrency bounds the API calls in flight during setup, and the
	// simulated appliances fetching their first netmap at once.
	Concurrency int
	// SyncWait is the long-poll wait each sync request asks for.
	SyncWait time.Duration
	// Timeout bounds the wait for every appliance to apply one change.
	Timeout time.Duration
	// LogLevel is the controller's --log-level; "" means info, as
	// deployed (one log line per request).
	LogLevel string
	// DecodeEnrollment makes setup decode the netmap in each enrollment
	// answer with netmap.Decode, as an appliance does; by default only its
	// version is read (setup is not measured, and at large N decoding
	// N²/2 peers dominates it).
	DecodeEnrollment bool
	// Progress, if set, receives one line per phase.
	Progress io.Writer
}

func (o *Options) defaults() error {
	if o.Appliances < 2 {
		return fmt.Errorf("appliances: want 2 or more, got %d", o.Appliances)
	}
	if o.Changes <= 0 {
		o.Changes = DefaultChanges
	}
	least := (o.Appliances+1)/2 + o.Changes
	if o.Sites <= 0 {
		o.Sites = least
	}
	if o.Sites > 65536 || o.Sites < least {
		return fmt.Errorf("sites: want %d (two appliances a site, one for each change) to 65536, got %d", least, o.Sites)
	}
	if o.DB == "sqlite" {
		o.DB = ""
	}
	if o.DB != "" && !store.IsPostgresDSN(o.DB) {
		return fmt.Errorf("db: want sqlite or a postgres:// DSN, got %q", o.DB)
	}
	switch o.Sync {
	case "":
		o.Sync = SyncDelta
	case SyncDelta, SyncFull:
	default:
		return fmt.Errorf("sync: want %s or %s, got %q", SyncDelta, SyncFull, o.Sync)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.SyncWait <= 0 {
		o.SyncWait = DefaultSyncWait
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.LogLevel == "" {
		o.LogLevel = DefaultLogLevel
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// Change is the measurement of one change.
type Change struct {
	// Version is the netmap version the change produced.
	Version uint64 `json:"version"`
	// APIMillis is how long the API call (the enrollment) took.
	APIMillis float64 `json:"api_ms"`
	// Applied counts the simulated appliances that applied the change
	// within the timeout (all of them, in a sound run).
	Applied int `json:"applied"`
	// P50Millis … MaxMillis are percentiles, over the appliances, of the
	// time from the API call's start until the appliance applied a netmap
	// at or past Version.
	P50Millis float64 `json:"p50_ms"`
	P90Millis float64 `json:"p90_ms"`
	P99Millis float64 `json:"p99_ms"`
	MaxMillis float64 `json:"max_ms"`
	// ControllerCPUSeconds is the controller process's CPU time (user plus
	// system) from the API call's start until every appliance had applied
	// the change and asked again (1 s later).
	ControllerCPUSeconds float64 `json:"controller_cpu_s"`
	// BenchCPUSeconds is the same for this process (the simulated
	// appliances), which shares the machine.
	BenchCPUSeconds float64 `json:"bench_cpu_s"`
	// Bytes is the sum of the sync answer bodies that carried the change;
	// Deltas counts those that were deltas.
	Bytes  int64 `json:"bytes"`
	Deltas int   `json:"deltas"`
}

// Result is what Run measured. Summary figures are medians over Changes.
type Result struct {
	Appliances int    `json:"appliances"`
	Sites      int    `json:"sites"`
	DB         string `json:"db"`
	Sync       string `json:"sync"`
	CPUs       int    `json:"cpus"`
	// SetupSeconds is how long enrolling the appliances and fetching their
	// first netmaps took; SetupControllerCPUSeconds the controller's CPU
	// time during it.
	SetupSeconds              float64 `json:"setup_s"`
	SetupControllerCPUSeconds float64 `json:"setup_controller_cpu_s"`
	// Changes are the measurements, in order.
	Changes []Change `json:"changes"`
	// Medians over Changes.
	P50Millis            float64 `json:"p50_ms"`
	P90Millis            float64 `json:"p90_ms"`
	P99Millis            float64 `json:"p99_ms"`
	MaxMillis            float64 `json:"max_ms"`
	APIMillis            float64 `json:"api_ms"`
	ControllerCPUSeconds float64 `json:"controller_cpu_s"`
	BenchCPUSeconds      float64 `json:"bench_cpu_s"`
	Bytes                int64   `json:"bytes"`
	// ControllerRSSBytes is the controller's resident set after the last
	// change; ControllerPeakRSSBytes its peak over the whole run (VmHWM),
	// setup included.
	ControllerRSSBytes     int64 `json:"controller_rss_bytes"`
	ControllerPeakRSSBytes int64 `json:"controller_peak_rss_bytes"`
	// BenchPeakRSSBytes is this process's peak resident set.
	BenchPeakRSSBytes int64 `json:"bench_peak_rss_bytes"`
	// SyncErrors counts failed sync requests of the simulated appliances
	// during the run (retried, as an appliance does).
	SyncErrors int `json:"sync_errors"`
}

// Run runs the benchmark. It stops the controller and removes its files
// before returning, also when ctx ends early.
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	n := opts.Appliances
	if _, err := raiseFileLimit(uint64(n) + uint64(opts.Concurrency) + 256); err != nil {
		return nil, err
	}
	progress := func(format string, args ...any) { fmt.Fprintf(opts.Progress, format+"\n", args...) }
	tmp, err := os.MkdirTemp("", "causeway-ctlbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	binary := opts.Binary
	if binary == "" {
		root, err := moduleRoot(ctx)
		if err != nil {
			return nil, err
		}
		binary = filepath.Join(tmp, "causeway")
		progress("building %s/cmd/causeway", root)
		if err := buildBinary(ctx, root, binary); err != nil {
			return nil, err
		}
	}
	db := opts.DB
	engine := "sqlite"
	if db != "" {
		engine = "postgres"
		var drop func() error
		if db, drop, err = freshSchema(ctx, db); err != nil {
			return nil, err
		}
		defer func() {
			if derr := drop(); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
	}
	ctl, err := startController(ctx, binary, filepath.Join(tmp, "data"), db, opts.LogLevel)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := ctl.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	progress("controller pid %d listening at %s (%s)", ctl.pid(), ctl.url, engine)

	res = &Result{Appliances: n, Sites: opts.Sites, DB: engine, Sync: opts.Sync, CPUs: runtime.NumCPU()}
	b := &bench{opts: opts, ctl: ctl, admin: newAdmin(ctl.url, ctl.token, opts.Concurrency), res: res, progress: progress}
	runCtx, stopSims := context.WithCancel(ctx)
	defer b.wg.Wait()
	defer stopSims()
	if err := b.setup(ctx, runCtx); err != nil {
		return nil, err
	}
	for i := range opts.Changes {
		c, err := b.change(ctx, i)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, *c)
		progress("change %d/%d: version %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms, controller CPU %.2f s, %d bytes (%d deltas)",
			i+1, opts.Changes, c.Version, c.P50Millis, c.P99Millis, c.MaxMillis, c.ControllerCPUSeconds, c.Bytes, c.Deltas)
		if c.Applied < n {
			return res, fmt.Errorf("change %d: %w: %d of %d within %s", i+1, errIncomplete, c.Applied, n, opts.Timeout)
		}
	}
	res.summarise()
	if res.ControllerRSSBytes, res.ControllerPeakRSSBytes, err = procMemory(ctl.pid()); err != nil {
		return nil, err
	}
	if _, res.BenchPeakRSSBytes, err = procMemory(os.Getpid()); err != nil {
		return nil, err
	}
	for _, s := range b.sims {
		k, _ := s.errors()
		res.SyncErrors += k
	}
	return res, nil
}

// bench is one run in progress.
type bench struct {
	opts     Options
	ctl      *controllerProc
	admin    *admin
	res      *Result
	progress func(string, ...any)

	tokens []string // spare enrollment tokens, one per change
	sites  []string
	sims   []*sim
	wg     sync.WaitGroup
	watch  atomic.Pointer[string]
	notify chan struct{}
}

const tenantName = "bench"

// setup creates the tenant, sites and tokens, enrols every appliance and
// starts the simulated appliances (their goroutines run until runCtx ends).
func (b *bench) setup(ctx, runCtx context.Context) error {
	n, opts := b.opts.Appliances, b.opts
	start := time.Now()
	cpu0, err := procCPU(b.ctl.pid())
	if err != nil {
		return err
	}
	if err := b.admin.createTenant(ctx, tenantName); err != nil {
		return err
	}
	for i := range opts.Sites {
		name := fmt.Sprintf("s%d", i)
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if err := b.admin.createSite(ctx, tenantName, name, prefix); err != nil {
			return err
		}
		b.sites = append(b.sites, name)
	}
	total := n + opts.Changes
	tokens := make([]string, total)
	if err := parallel(ctx, total, opts.Concurrency, func(i int) (err error) {
		// The appliances fill the first sites; each change gets one of
		// the last ones.
		site := i % (len(b.sites) - opts.Changes)
		if i >= n {
			site = len(b.sites) - opts.Changes + (i - n)
		}
		tokens[i], err = b.admin.createToken(ctx, tenantName, b.sites[site])
		return err
	}); err != nil {
		return err
	}
	b.tokens = tokens[n:]
	b.progress("created tenant %q, %d sites and %d enrollment tokens", tenantName, len(b.sites), total)

	enr := make([]*enrolled, n)
	var done atomic.Int64
	if err := parallel(ctx, n, opts.Concurrency, func(i int) (err error) {
		k, err := wgkey.NewPrivate()
		if err != nil {
			return err
		}
		enr[i], err = b.admin.enroll(ctx, tokens[i], fmt.Sprintf("a-%05d", i), k.Public(), endpoint(i), opts.DecodeEnrollment)
		if d := done.Add(1); d%1000 == 0 {
			b.progress("enrolled %d/%d appliances (%.0f s)", d, n, time.Since(start).Seconds())
		}
		return err
	}); err != nil {
		return err
	}
	b.progress("enrolled %d appliances in %.1f s", n, time.Since(start).Seconds())

	decode := make(chan struct{}, max(4, 2*runtime.GOMAXPROCS(0)))
	b.notify = make(chan struct{}, 1)
	b.sims = make([]*sim, n)
	for i, e := range enr {
		b.sims[i] = newSim(e, b.ctl.url, opts.Sync == SyncDelta, opts.SyncWait, &b.watch, decode, b.notify)
	}
	if err := parallel(ctx, n, opts.Concurrency, func(i int) error { return b.sims[i].first(ctx) }); err != nil {
		return fmt.Errorf("first sync: %w", err)
	}
	for _, s := range b.sims {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			s.run(runCtx)
		}()
	}
	// Wait until every simulated appliance holds a long-poll.
	deadline := time.Now().Add(opts.Timeout)
	for {
		c, err := b.connected(ctx)
		if err != nil {
			return err
		}
		if c >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d simulated appliances hold a sync request after %s", c, n, opts.Timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cpu1, err := procCPU(b.ctl.pid())
	if err != nil {
		return err
	}
	b.res.SetupSeconds = time.Since(start).Seconds()
	b.res.SetupControllerCPUSeconds = (cpu1 - cpu0).Seconds()
	b.progress("%d simulated appliances hold a long-poll (setup %.1f s, controller CPU %.1f s)", n, b.res.SetupSeconds, b.res.SetupControllerCPUSeconds)
	return nil
}

// endpoint is appliance i's underlay endpoint, in the benchmarking range
// 198.18.0.0/15.
func endpoint(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)}), 51820)
}

// connected reads causeway_connected_appliances from /metrics.
func (b *bench) connected(ctx context.Context) (int, error) {
	var n int
	body, err := b.admin.metrics(ctx)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, "causeway_connected_appliances "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				return 0, fmt.Errorf("/metrics: %q", line)
			}
			n = int(f)
		}
	}
	return n, nil
}

// change makes change i (one more appliance enrols) and measures it.
func (b *bench) change(ctx context.Context, i int) (*Change, error) {
	time.Sleep(time.Second) // let the previous change's re-polls settle
	name := fmt.Sprintf("z-%05d", i)
	b.watch.Store(&name)
	k, err := wgkey.NewPrivate()
	if err != nil {
		return nil, err
	}
	// Drain a stale wake-up.
	select {
	case <-b.notify:
	default:
	}
	cpu0, err := procCPU(b.ctl.pid())
	if err != nil {
		return nil, err
	}
	self0, err := procCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	e, err := b.admin.enroll(ctx, b.tokens[i], name, k.Public(), endpoint(b.opts.Appliances+i), true)
	if err != nil {
		return nil, err
	}
	c := &Change{Version: e.version, APIMillis: millis(time.Since(start))}
	for c.Version == 0 {
		// The enrollment answered without a netmap: ask for its version.
		if time.Since(start) > b.opts.Timeout {
			return nil, fmt.Errorf("appliance %s has no netmap %s after enrolling", name, b.opts.Timeout)
		}
		if c.Version, err = b.admin.netmapVersion(ctx, tenantName, e.id); err != nil {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.version = c.Version

	deadline := time.NewTimer(b.opts.Timeout)
	defer deadline.Stop()
	check := time.NewTicker(20 * time.Millisecond)
	defer check.Stop()
	pending := slices.Clone(b.sims)
	var lat []time.Duration
	for len(pending) > 0 {
		rest := pending[:0]
		for _, s := range pending {
			a, ok := s.appliedAt(e.version)
			switch {
			case !ok:
				rest = append(rest, s)
			case !a.watched:
				return nil, fmt.Errorf("appliance %s applied version %d without the new peer %s", s.e.name, a.version, name)
			default:
				lat = append(lat, a.at.Sub(start))
				c.Bytes += a.bytes
				if a.delta {
					c.Deltas++
				}
			}
		}
		pending = rest
		if len(pending) == 0 {
			break
		}
		select {
		case <-b.notify:
		case <-check.C:
		case <-deadline.C:
			pending = nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	time.Sleep(time.Second) // the appliances ask again
	cpu1, err := procCPU(b.ctl.pid())
	if err != nil {
		return nil, err
	}
	self1, err := procCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	c.ControllerCPUSeconds, c.BenchCPUSeconds = (cpu1 - cpu0).Seconds(), (self1 - self0).Seconds()
	c.Applied = len(lat)
	if len(lat) > 0 {
		slices.Sort(lat)
		c.P50Millis, c.P90Millis = millis(quantile(lat, 0.50)), millis(quantile(lat, 0.90))
		c.P99Millis, c.MaxMillis = millis(quantile(lat, 0.99)), millis(lat[len(lat)-1])
	}
	return c, nil
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *Result) summarise() {
	med := func(f func(*Change) float64) float64 {
		vs := make([]float64, len(r.Changes))
		for i := range r.Changes {
			vs[i] = f(&r.Changes[i])
		}
		sort.Float64s(vs)
		if len(vs) == 0 {
			return 0
		}
		if len(vs)%2 == 1 {
			return vs[len(vs)/2]
		}
		return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	r.P50Millis = med(func(c *Change) float64 { return c.P50Millis })
	r.P90Millis = med(func(c *Change) float64 { return c.P90Millis })
	r.P99Millis = med(func(c *Change) float64 { return c.P99Millis })
	r.MaxMillis = med(func(c *Change) float64 { return c.MaxMillis })
	r.APIMillis = med(func(c *Change) float64 { return c.APIMillis })
	r.ControllerCPUSeconds = med(func(c *Change) float64 { return c.ControllerCPUSeconds })
	r.BenchCPUSeconds = med(func(c *Change) float64 { return c.BenchCPUSeconds })
	r.Bytes = int64(med(func(c *Change) float64 { return float64(c.Bytes) }))
}

// parallel runs fn(0) … fn(n-1), at most limit at a time, and returns the
// first error (the rest are not started once one fails).
func parallel(ctx context.Context, n, limit int, fn func(int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  atomic.Int64
	)
	for range min(limit, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				mu.Lock()
				stop := first != nil
				mu.Unlock()
				if i >= n || stop || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// freshSchema creates a schema of its own on the PostgreSQL server of dsn
// and returns a DSN that uses it, and a function that drops it.
func freshSchema(ctx context.Context, dsn string) (string, func() error, error) {
	var r [6]byte
	rand.Read(r[:])
	schema := "ctlbench_" + hex.EncodeToString(r[:])
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return "", nil, fmt.Errorf("db: %w", err)
	}
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		return "", nil, fmt.Errorf("db: creating schema %s: %w", schema, err)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		db.Close()
		return "", nil, fmt.Errorf("db: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	drop := func() error {
		defer db.Close()
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := db.ExecContext(dctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			return fmt.Errorf("dropping schema %s: %w", schema, err)
		}
		return nil
	}
	return u.String(), drop, nil
}
