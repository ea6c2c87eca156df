package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/causeway-net/causeway/appliance"
)

// Options configure Up. Every field may be left zero.
type Options struct {
	// Instance names the lab: 1-8 lower-case letters and digits, used in
	// every namespace name (cw-<instance>-<node>). Default "demo".
	Instance string
	// Binary is the causeway binary that runs the appliances, the
	// service and every command inside a namespace (its hidden
	// `lab nsexec`). Default: this program (os.Executable), which is
	// right for the causeway command but not for a test binary.
	Binary string
	// StateRoot holds one directory per instance. Default
	// DefaultStateRoot. Every user of one machine should use the same
	// root: Sweep treats namespaces it has no state for as leftovers.
	StateRoot string
	// OwnerPID, if not 0, ties the instance to that process: once it has
	// exited, the instance is stale and Sweep removes it. 0 makes the
	// instance persistent (causeway lab up).
	OwnerPID int
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Instance == "" {
		o.Instance = DefaultInstance
	}
	if err := checkInstance(o.Instance); err != nil {
		return o, err
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if !filepath.IsAbs(o.StateRoot) {
		return o, fmt.Errorf("lab: state root %q is not an absolute path", o.StateRoot)
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("lab: finding the causeway binary: %w", err)
		}
		o.Binary = exe
	}
	if !filepath.IsAbs(o.Binary) {
		abs, err := filepath.Abs(o.Binary)
		if err != nil {
			return o, err
		}
		o.Binary = abs
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// How long Up and StartAppliance wait for the lab to come up when the
// caller's context has no earlier deadline.
const readyTimeout = 60 * time.Second

// Lab is one instance of the lab topology. Its methods are safe for
// concurrent use; a Lab from Open can control an instance that another
// process started.
type Lab struct {
	t         *topology
	instance  string
	stateRoot string
	dir       string
	binary    string
	log       *slog.Logger // with the instance name
	baseLog   *slog.Logger // without it, for Remove

	mu        sync.Mutex // guards the fields below and serializes state file writes
	st        *stateFile
	children  map[string]*child // processes started by this process, by name
	ctlClient *http.Client      // see ControllerClient; nil until first used
}

// ErrExists is returned by Up when the instance already exists.
var ErrExists = errors.New("lab instance already exists")

// Up builds the instance: namespaces, links, addresses, routes, the home
// router's NAT. It then starts the services (the backend, web-1) and the controller,
// creates the tenant, the sites and one enrollment token per site through
// the controller's API, and starts the appliances, which enroll with their
// tokens. It returns once every appliance has applied a netmap that lists
// all the others, the hosts at office-1 and home-1 can fetch the
// backend's page through the overlay, and office-1-host can fetch web-1's
// through office-1's Internet gateway. On error, and when ctx is
// cancelled, it tears down whatever it built.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: building network namespaces needs root")
	}
	l := &Lab{
		t:         labTopology,
		instance:  o.Instance,
		stateRoot: o.StateRoot,
		dir:       instanceDir(o.StateRoot, o.Instance),
		binary:    o.Binary,
		log:       o.Logger.With("instance", o.Instance),
		baseLog:   o.Logger,
	}
	st := &stateFile{
		Version:    stateVersion,
		Instance:   o.Instance,
		OwnerPID:   o.OwnerPID,
		Binary:     o.Binary,
		Created:    time.Now().UTC().Truncate(time.Second),
		Namespaces: l.t.netnsNames(o.Instance),
		Processes:  []procRecord{},
	}
	if o.OwnerPID != 0 {
		if _, st.OwnerStartTime, err = procStat(o.OwnerPID); err != nil {
			return nil, fmt.Errorf("lab: owner process %d: %w", o.OwnerPID, err)
		}
	}
	if fi, err := os.Stat(o.Binary); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("lab: causeway binary %s not found", o.Binary)
	}
	if existing, err := instanceNetns(o.Instance); err != nil {
		return nil, err
	} else if len(existing) > 0 {
		return nil, fmt.Errorf("%w: %q has namespaces (%s); take it down with 'causeway lab down --instance %s'",
			ErrExists, o.Instance, existing[0], o.Instance)
	}
	if err := os.MkdirAll(o.StateRoot, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := os.Mkdir(l.dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %q has state in %s; take it down with 'causeway lab down --instance %s'",
				ErrExists, o.Instance, l.dir, o.Instance)
		}
		return nil, fmt.Errorf("lab: %w", err)
	}
	// From here on, the state directory is ours: any error tears down.
	defer func() {
		if err != nil {
			if derr := l.Down(); derr != nil {
				l.log.Error("tearing down a failed lab", "err", derr)
			}
		}
	}()
	l.st = st
	if err := saveState(l.dir, st); err != nil {
		return nil, err
	}

	start := time.Now()
	l.log.Info("building namespaces", "nodes", len(l.t.nodes))
	b := &builder{t: l.t, instance: l.instance}
	err = b.build(ctx)
	b.close()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for _, a := range l.t.appliances {
		if err := os.Mkdir(l.applianceDir(a.name), 0o700); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	}
	l.log.Info("topology built", "elapsed", time.Since(start).Round(time.Millisecond))

	wctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := l.startController(wctx); err != nil {
		return nil, err
	}
	for _, sv := range l.t.services {
		if err := l.startService(wctx, sv); err != nil {
			return nil, err
		}
	}
	tokens, err := l.provision(wctx)
	if err != nil {
		return nil, err
	}
	l.log.Info("tenant, sites and enrollment tokens created", "tenant", l.Tenant())
	fp, err := l.CAFingerprint()
	if err != nil {
		return nil, err
	}
	// One at a time, in topology order, so that the controller hands out
	// the overlay addresses in that order, and the appliance behind NAT
	// last: it starts its handshakes at once, and one that reaches a peer
	// which does not know it yet is only retried five seconds later.
	for _, a := range l.t.appliances {
		if err := l.startAppliance(a.name, fp, tokens[a.name]); err != nil {
			return nil, err
		}
		if err := l.waitHealthy(wctx, a.name); err != nil {
			return nil, err
		}
		if a.pair != nil && a.pair.priority != defaultPriority {
			// Before the partner enrolls: from the pair's first netmap on,
			// the controller's priority is the one in force.
			var v struct{}
			if err := l.ctlJSON(wctx, &v, "pair", "priority", l.Tenant(), a.name, strconv.Itoa(a.pair.priority)); err != nil {
				return nil, err
			}
		}
	}
	if err := l.waitNetmaps(wctx); err != nil {
		return nil, err
	}
	if err := l.waitPairs(wctx); err != nil {
		return nil, err
	}
	for _, host := range []string{"office-1-host", "home-1-host"} {
		if err := l.waitReachable(wctx, host, l.t.services[0]); err != nil {
			return nil, err
		}
	}
	// office-1's pair is its LAN's Internet gateway.
	if err := l.waitReachable(wctx, "office-1-host", *l.service("web-http")); err != nil {
		return nil, err
	}
	l.log.Info("lab up", "elapsed", time.Since(start).Round(time.Millisecond))
	return l, nil
}

// Open attaches to an instance that Up made, in this process or another.
// It fails with an error wrapping fs.ErrNotExist if the instance has no
// state; Remove can still take down what exists of such an instance.
func Open(stateRoot, instance string) (*Lab, error) {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	if err := checkInstance(instance); err != nil {
		return nil, err
	}
	dir := instanceDir(stateRoot, instance)
	st, err := loadState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab: no instance %q in %s: %w", instance, stateRoot, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return &Lab{
		t:         labTopology,
		instance:  instance,
		stateRoot: stateRoot,
		dir:       dir,
		binary:    st.Binary,
		log:       slog.New(slog.DiscardHandler),
		baseLog:   slog.New(slog.DiscardHandler),
		st:        st,
	}, nil
}

// Instance is the instance name.
func (l *Lab) Instance() string { return l.instance }

// StateDir is the instance's state directory.
func (l *Lab) StateDir() string { return l.dir }

// Down stops every process of the instance, deletes its namespaces (which
// removes every link) and its state directory. It is idempotent, and
// works on a partly built instance.
func (l *Lab) Down() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := Remove(l.stateRoot, l.instance, l.baseLog)
	l.st = &stateFile{Version: stateVersion, Instance: l.instance, Binary: l.binary}
	return err
}

// Status describes the instance.
func (l *Lab) Status() Status {
	// The pair members' views first, over HTTP, without the lock.
	views := l.pairStatuses(func(name string) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.reloadLocked()
		r := l.procLocked(name)
		return r != nil && r.isOurs()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reloadLocked()
	fp, _ := l.CAFingerprint()
	return buildStatus(l.t, l.instance, l.dir, liveState{
		pid: func(name string) int {
			if r := l.procLocked(name); r != nil && r.isOurs() {
				return r.PID
			}
			return 0
		},
		pair: func(name string) *appliance.PairView { return views[name] },
		overlay: func(name string) string {
			if nm, err := appliance.LoadNetmap(l.applianceDir(name)); err == nil && nm != nil {
				return nm.OverlayAddr.String()
			}
			return ""
		},
		caFingerprint: fp,
	})
}

// reloadLocked rereads the state file, which another process (lab up,
// a test's StartAppliance) may have changed since.
func (l *Lab) reloadLocked() {
	if st, err := loadState(l.dir); err == nil {
		l.st = st
	}
}

// procLocked returns the record of the named process, or nil.
func (l *Lab) procLocked(name string) *procRecord {
	for i := range l.st.Processes {
		if l.st.Processes[i].Name == name {
			return &l.st.Processes[i]
		}
	}
	return nil
}

// setProcLocked records p, replacing an earlier record of the same name,
// and saves the state.
func (l *Lab) setProcLocked(p procRecord) error {
	l.reloadLocked()
	l.st.Processes = slices.DeleteFunc(l.st.Processes, func(r procRecord) bool { return r.Name == p.Name })
	l.st.Processes = append(l.st.Processes, p)
	return saveState(l.dir, l.st)
}

// Nodes returns every node name.
func (l *Lab) Nodes() []string { return l.t.nodeNames() }

// Netns returns the namespace name of node, or "" if there is no such node.
func (l *Lab) Netns(node string) string {
	if l.t.node(node) == nil {
		return ""
	}
	return netnsName(l.instance, node)
}

func (l *Lab) checkNode(node string) error {
	if l.t.node(node) == nil {
		return fmt.Errorf("lab: no node %q (nodes: %s)", node, strings.Join(l.t.nodeNames(), ", "))
	}
	return nil
}

// Command returns a command that runs prog (looked up in PATH) with args
// inside node's namespace, through the lab binary's `lab nsexec`; the
// process it starts is prog itself. Like exec.CommandContext, ctx kills
// the process. For an unknown node, the command's Start fails.
func (l *Lab) Command(ctx context.Context, node, prog string, args ...string) *exec.Cmd {
	argv := nsexecArgv(l.binary, netnsName(l.instance, node), append([]string{prog}, args...))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if err := l.checkNode(node); err != nil {
		cmd.Err = err
	}
	return cmd
}

// DialContext connects to addr (a literal IP:port) with a socket created
// inside node's namespace. network is as for net.Dial.
func (l *Lab) DialContext(ctx context.Context, node, network, addr string) (net.Conn, error) {
	if err := l.checkNode(node); err != nil {
		return nil, err
	}
	return dialInNetns(ctx, netnsName(l.instance, node), network, addr)
}

// HTTPClient returns a client whose connections start in node's
// namespace. It uses no proxy and sets no timeout: bound requests with a
// context. URLs must name hosts by IP address.
func (l *Lab) HTTPClient(node string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.DialContext(ctx, node, network, addr)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}
}

// ApplianceConfig returns the config the named appliance runs with: the
// one it derives from the last netmap it applied (saved in its state
// directory) and the lab's local settings. It is nil if there is no such
// appliance or it has applied no netmap yet. The result is a fresh copy.
func (l *Lab) ApplianceConfig(name string) *appliance.Config {
	a := l.t.appliance(name)
	if a == nil {
		return nil
	}
	nm, err := appliance.LoadNetmap(l.applianceDir(name))
	if err != nil || nm == nil {
		return nil
	}
	cfg, err := appliance.ConfigFromNetmap(l.local(a), nm)
	if err != nil {
		return nil
	}
	return cfg
}

// local is what the lab decides for an appliance itself; everything else
// comes from the controller's netmap. It matches applianceArgv.
func (l *Lab) local(a *applianceSpec) appliance.Local {
	var ups []appliance.Uplink
	for _, w := range a.wans {
		ups = append(ups, appliance.Uplink{Name: w, Interface: w})
	}
	loc := appliance.Local{
		StateDir:   l.applianceDir(a.name),
		Interface:  appliance.DefaultInterface,
		ListenPort: listenPort,
		HTTPListen: appliance.DefaultHTTPListen,
		Uplinks:    ups,
	}
	if a.gateway != "" {
		loc.Gateway = &appliance.GatewayConfig{LANInterface: a.gateway}
	}
	if p := a.pair; p != nil {
		loc.Pair = &appliance.PairLocal{Preempt: true, LANInterface: a.gateway, LANAddr: l.t.lanAddr(a.name),
			PartnerLANAddr: l.t.lanAddr(p.partner), VIP: p.vip, WANInterface: a.wans[0], WANAddr: l.t.pairWANAddr(a.name),
			PartnerWANAddr: l.t.pairWANAddr(p.partner), BorrowedUplink: p.borrowed, LendPort: lendPort}
		loc.PairPriority = p.priority
	}
	return loc
}

// UnderlayFragments returns how many IPv4 fragments the routers on the
// way between sites (inet and the home router) have seen since the lab
// was built. With a correct overlay MTU it stays 0.
func (l *Lab) UnderlayFragments() (uint64, error) {
	var total uint64
	for _, node := range l.t.fragCounters {
		n, err := readFragmentCounter(netnsName(l.instance, node))
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// LogPath returns the log file of an appliance, a service, the
// controller ("controller") or the meter sink ("meter-sink"), or "".
func (l *Lab) LogPath(name string) string {
	switch {
	case name == controllerName, name == meterSinkName:
		return filepath.Join(l.dir, name+".log")
	case l.t.appliance(name) != nil:
		return filepath.Join(l.applianceDir(name), applianceLog)
	case l.service(name) != nil:
		return filepath.Join(l.dir, name+".log")
	}
	return ""
}

func (l *Lab) service(name string) *serviceSpec {
	for i := range l.t.services {
		if l.t.services[i].name == name {
			return &l.t.services[i]
		}
	}
	return nil
}

// applianceDir is the appliance's state directory: its key, credential,
// last netmap and log.
func (l *Lab) applianceDir(name string) string { return filepath.Join(l.dir, name) }

// applianceProcess returns the process record of the named appliance, as
// the state file has it now; ok is false when it is not running.
func (l *Lab) applianceProcess(name string) (rec procRecord, ok bool, err error) {
	if l.t.appliance(name) == nil {
		return rec, false, fmt.Errorf("lab: no appliance %q", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reloadLocked()
	if r := l.procLocked(name); r != nil {
		return *r, true, nil
	}
	return rec, false, nil
}

// KillAppliance ends the named appliance with SIGKILL, as a crash would,
// and waits for it to exit. What it set up in its namespace stays as a
// crash leaves it (its gateway's rules, its VIP until the lease runs out);
// StartAppliance cleans that up. Killing a stopped appliance is not an
// error.
func (l *Lab) KillAppliance(name string) error {
	rec, ok, err := l.applianceProcess(name)
	if err != nil || !ok {
		return err
	}
	if err := killProcess(rec); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.log.Info("appliance killed", "appliance", name)
	return nil
}

// StopAppliance stops the named appliance (SIGTERM, SIGKILL after a
// timeout) and waits for it to exit. Stopping a stopped appliance is not
// an error.
func (l *Lab) StopAppliance(name string) error {
	rec, ok, err := l.applianceProcess(name)
	if err != nil || !ok {
		return err
	}
	if err := stopProcess(rec, stopTimeout); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.log.Info("appliance stopped", "appliance", name)
	return nil
}

// StartAppliance starts the named appliance again (after StopAppliance)
// and waits until it reports healthy. It is enrolled already, so it needs
// no token: it comes up from the netmap it saved and follows the
// controller again, or, with the controller down, runs on that netmap.
func (l *Lab) StartAppliance(ctx context.Context, name string) error {
	if l.t.appliance(name) == nil {
		return fmt.Errorf("lab: no appliance %q", name)
	}
	l.mu.Lock()
	l.reloadLocked()
	if r := l.procLocked(name); r != nil && r.isOurs() {
		l.mu.Unlock()
		return fmt.Errorf("lab: appliance %s is already running (pid %d)", name, r.PID)
	}
	l.mu.Unlock()
	if enr, err := appliance.LoadEnrollment(l.applianceDir(name)); err != nil || enr == nil {
		return fmt.Errorf("lab: appliance %s has not enrolled (%v): take the lab down and up again", name, err)
	}
	fp, err := l.CAFingerprint()
	if err != nil {
		return err
	}
	if err := l.startAppliance(name, fp, ""); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return l.waitHealthy(wctx, name)
}

// applianceArgv is the command line of a controller-managed appliance:
// one pinned socket per uplink, its endpoints (one per uplink address and,
// for a pair member, the partner's lend port), the Internet gateway where
// the topology makes it one, the pair member's settings, and a usage record every
// UsageInterval. An appliance behind NAT reports no endpoints: it only dials out.
func (l *Lab) applianceArgv(a *applianceSpec, caFingerprint string) []string {
	argv := []string{l.binary, "appliance",
		"--controller", l.ControllerURL(),
		"--ca-fingerprint", caFingerprint,
		"--state-dir", l.applianceDir(a.name),
		"--name", a.name,
		"--uplinks", strings.Join(a.wans, ","),
	}
	if eps := l.t.endpoints(a); len(eps) > 0 {
		var s []string
		for _, ep := range eps {
			s = append(s, ep.String())
		}
		argv = append(argv, "--endpoints", strings.Join(s, ","))
	}
	if a.gateway != "" {
		argv = append(argv, "--gateway", a.gateway)
	}
	if p := a.pair; p != nil {
		// As local() has it.
		argv = append(argv, "--pair-vip", p.vip.String(),
			"--pair-lan-addr", l.t.lanAddr(a.name).String(), "--pair-partner-lan-addr", l.t.lanAddr(p.partner).String(),
			"--pair-wan-interface", a.wans[0], "--pair-wan-addr", l.t.pairWANAddr(a.name).String(),
			"--pair-partner-wan", l.t.pairWANAddr(p.partner).String(), "--pair-borrowed-uplink", p.borrowed,
			"--pair-lend-port", strconv.Itoa(lendPort), "--pair-priority", strconv.Itoa(p.priority), "--pair-preempt")
	}
	return append(argv, "--usage-interval", UsageInterval.String())
}

// startAppliance starts `causeway appliance` in the appliance's namespace;
// token, if set, is the one-time enrollment token for its first start.
func (l *Lab) startAppliance(name, caFingerprint, token string) error {
	argv := l.applianceArgv(l.t.appliance(name), caFingerprint)
	var env []string
	if token != "" {
		env = append(env, "CAUSEWAY_ENROLL_TOKEN="+token)
	}
	r, err := l.startRecorded(name, kindAppliance, name, l.LogPath(name), argv, env...)
	if err != nil {
		return fmt.Errorf("lab: appliance %s: %w", name, err)
	}
	l.log.Info("appliance started", "appliance", name, "pid", r.PID, "log", r.Log)
	return nil
}

// startService starts the lab's HTTP service and waits until it accepts
// connections.
func (l *Lab) startService(ctx context.Context, sv serviceSpec) error {
	argv := []string{l.binary, "lab", "serve-http", "--listen", sv.listen.String(), "--name", sv.host}
	if sv.udpEcho.IsValid() {
		argv = append(argv, "--udp-echo", sv.udpEcho.String())
	}
	r, err := l.startRecorded(sv.name, kindService, sv.host, l.LogPath(sv.name), argv)
	if err != nil {
		return fmt.Errorf("lab: service %s: %w", sv.name, err)
	}
	err = poll(ctx, func(ctx context.Context) error {
		if err := l.exited(sv.name, r); err != nil {
			return err
		}
		conn, err := l.DialContext(ctx, sv.host, "tcp", sv.listen.String())
		if err == nil {
			conn.Close()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("lab: service %s on %s did not start: %w%s", sv.name, sv.listen, err, logTail(r.Log))
	}
	l.log.Info("service started", "service", sv.name, "url", serviceURL(sv), "pid", r.PID)
	return nil
}

func (l *Lab) setChildLocked(name string, c *child) {
	if l.children == nil {
		l.children = map[string]*child{}
	}
	l.children[name] = c
}

// exited returns an error wrapping errExited if the named process has
// exited: with its exit status if this process started it.
func (l *Lab) exited(name string, r procRecord) error {
	l.mu.Lock()
	c := l.children[name]
	l.mu.Unlock()
	if c != nil {
		return c.exitErr()
	}
	if !r.isOurs() {
		return errExited
	}
	return nil
}

// waitHealthy waits until the appliance answers 200 on /healthz.
func (l *Lab) waitHealthy(ctx context.Context, name string) error {
	l.mu.Lock()
	var rec procRecord
	if r := l.procLocked(name); r != nil {
		rec = *r
	}
	l.mu.Unlock()
	client := l.HTTPClient(name)
	defer client.CloseIdleConnections()
	url := "http://" + appliance.DefaultHTTPListen + "/healthz"
	err := poll(ctx, func(ctx context.Context) error {
		if err := l.exited(name, rec); err != nil {
			return err
		}
		return httpGet(ctx, client, url, "")
	})
	if err != nil {
		return fmt.Errorf("lab: appliance %s not healthy: %w%s", name, err, logTail(rec.Log))
	}
	l.log.Info("appliance healthy", "appliance", name)
	return nil
}

// waitNetmaps waits until every appliance has applied (and saved) a
// netmap that lists every other appliance as a peer.
func (l *Lab) waitNetmaps(ctx context.Context) error {
	want := len(l.t.appliances) - 1
	err := poll(ctx, func(ctx context.Context) error {
		for _, a := range l.t.appliances {
			nm, err := appliance.LoadNetmap(l.applianceDir(a.name))
			if err != nil {
				return err
			}
			if nm == nil || len(nm.Peers) != want {
				n := 0
				if nm != nil {
					n = len(nm.Peers)
				}
				return fmt.Errorf("%s has applied a netmap with %d of %d peers", a.name, n, want)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("lab: the appliances did not converge: %w", err)
	}
	l.log.Info("every appliance has every peer")
	return nil
}

// waitReachable waits until host can fetch the service's page through the
// overlay.
func (l *Lab) waitReachable(ctx context.Context, host string, sv serviceSpec) error {
	client := l.HTTPClient(host)
	defer client.CloseIdleConnections()
	err := poll(ctx, func(ctx context.Context) error {
		return httpGet(ctx, client, serviceURL(sv), sv.host)
	})
	if err != nil {
		return fmt.Errorf("lab: %s cannot reach %s: %w", host, serviceURL(sv), err)
	}
	l.log.Info("overlay path up", "from", host, "to", serviceURL(sv))
	return nil
}

// poll calls try, giving each attempt up to two seconds, until it succeeds,
// returns errExited, or ctx is done; the error is the last attempt's.
func poll(ctx context.Context, try func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := try(actx)
		cancel()
		if err == nil || errors.Is(err, errExited) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// httpGet fetches url and wants 200 and, if want is set, a body holding it.
func httpGet(ctx context.Context, c *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if want != "" && !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: body does not mention %q", url, want)
	}
	return nil
}

// logTail formats the end of a log file for an error message.
func logTail(path string) string {
	t := tailFile(path, 2048)
	if t == "" {
		return ""
	}
	return "\n--- end of " + path + ":\n" + t
}
