package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// upLab builds an instance for a test, named after tag and this process
// (so that test runs in other processes never share it), owned by owner,
// and takes it down when the test ends, whatever happens.
func upLab(t *testing.T, tag string, owner int) *Lab {
	t.Helper()
	needRoot(t)
	instance := UniqueInstance(tag)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := Up(ctx, Options{Instance: instance, Binary: testBinary, OwnerPID: owner, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	return l
}

// fetch GETs url from inside node and returns the body.
func fetch(ctx context.Context, l *Lab, node, url string) ([]byte, error) {
	c := l.HTTPClient(node)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	l := upLab(t, "e2e", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := "http://" + backendAddr.String() + "/"

	t.Run("office-to-backend", func(t *testing.T) {
		body, err := fetch(ctx, l, "office-1-host", url)
		if err != nil {
			t.Fatal(err)
		}
		// The backend names itself and sees the office host's own address:
		// the overlay routes, it does not NAT.
		if !strings.Contains(string(body), "vpc-1-backend-1") || !strings.Contains(string(body), "10.10.0.10:") {
			t.Errorf("page: %q", body)
		}
	})

	t.Run("home-behind-nat-to-backend", func(t *testing.T) {
		body, err := fetch(ctx, l, "home-1-host", url)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), "vpc-1-backend-1") || !strings.Contains(string(body), "10.30.0.10:") {
			t.Errorf("page: %q", body)
		}
	})

	t.Run("second-backend-on-the-lan", func(t *testing.T) {
		// The VPC's other host is on the same bridge, outside the overlay.
		if _, err := fetch(ctx, l, "vpc-1-backend-2", url); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("unannounced-prefix-unreachable", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, node := range []string{"office-1-host", "home-1-host"} {
			wg.Go(func() {
				dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
				defer cancel()
				if c, err := l.DialContext(dctx, node, "tcp", unannouncedAddr.String()+":80"); err == nil {
					c.Close()
					t.Errorf("%s reached %s, which no site announces", node, unannouncedAddr)
				}
			})
		}
		wg.Wait()
	})

	t.Run("lans-not-routed-in-the-underlay", func(t *testing.T) {
		// inet has no route to any LAN: only the overlay connects them.
		dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		if c, err := l.DialContext(dctx, "inet", "tcp", backendAddr.String()+":80"); err == nil {
			c.Close()
			t.Error("inet reached the backend outside the overlay")
		}
	})

	t.Run("4MB-over-1400-MTU-unfragmented", func(t *testing.T) {
		before, err := l.UnderlayFragments()
		if err != nil {
			t.Fatal(err)
		}
		const n = 4 << 20
		// Seconds at worst here; an overlay MTU too big for the ISP link
		// stalls the transfer rather than failing it.
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		body, err := fetch(dctx, l, "home-1-host", fmt.Sprintf("%sbytes?n=%d", url, n))
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != n {
			t.Fatalf("got %d bytes, want %d", len(body), n)
		}
		if err := checkPattern(body); err != nil {
			t.Fatal(err)
		}
		after, err := l.UnderlayFragments()
		if err != nil {
			t.Fatal(err)
		}
		if before != 0 || after != 0 {
			t.Errorf("the underlay carried %d IP fragments (%d before the download): the overlay MTU does not fit the 1400-byte ISP link", after, before)
		}
	})

	t.Run("fragment-counter-counts", func(t *testing.T) {
		// The check above means something only if the counter sees
		// fragments: a 3000-byte datagram over the 1400-byte link is sent
		// as three.
		before, err := l.UnderlayFragments()
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.DialContext(ctx, "inet", "udp", "198.18.3.2:9")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, 3000)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			n, err := l.UnderlayFragments()
			if err != nil {
				t.Fatal(err)
			}
			if n >= before+3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("fragment counters at %d after sending 3 fragments (%d before)", n, before)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("command-in-netns", func(t *testing.T) {
		// /proc/net/dev lists the interfaces of the reader's namespace.
		out, err := l.Command(ctx, "office-1-host", "cat", "/proc/net/dev").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !strings.Contains(string(out), "eth0:") || strings.Contains(string(out), "wan0:") {
			t.Errorf("office-1-host's interfaces:\n%s", out)
		}
		if err := l.Command(ctx, "nosuch", "true").Run(); err == nil {
			t.Error("a command for an unknown node started")
		}
	})

	t.Run("stop-start-appliance", func(t *testing.T) {
		if err := l.StopAppliance(memberA); err != nil {
			t.Fatal(err)
		}
		for _, a := range l.Status().Appliances {
			if a.Name == memberA && a.PID != 0 {
				t.Errorf("%s stopped but status has pid %d", memberA, a.PID)
			}
		}
		// The appliance removed its interface on SIGTERM.
		out, _ := l.Command(ctx, memberA, "cat", "/proc/net/dev").CombinedOutput()
		if strings.Contains(string(out), "cw0:") {
			t.Errorf("cw0 still exists after the appliance stopped:\n%s", out)
		}
		if err := l.StartAppliance(ctx, memberA); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAppliance(ctx, memberA); err == nil {
			t.Error("starting a running appliance twice succeeded")
		}
		// It takes the pair's active role back (priority, preempt).
		if err := l.waitPairs(ctx); err != nil {
			t.Fatal(err)
		}
		for _, a := range l.Status().Appliances {
			if a.PID == 0 {
				t.Errorf("%s not running after StartAppliance", a.Name)
			}
		}
		if err := l.waitReachable(ctx, "office-1-host", labTopology.services[0]); err != nil {
			t.Error(err)
		}
	})

	t.Run("open-from-state", func(t *testing.T) {
		o, err := Open(DefaultStateRoot, l.Instance())
		if err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(o.Status())
		want, _ := json.Marshal(l.Status())
		if !bytes.Equal(got, want) {
			t.Errorf("Open's status:\n%s\nwant\n%s", got, want)
		}
		if cfg := o.ApplianceConfig("home-1"); cfg == nil || cfg.Name != "home-1" || len(cfg.Peers) != 3 {
			t.Errorf("ApplianceConfig(home-1) = %+v", cfg)
		}
		if o.ApplianceConfig("nosuch") != nil {
			t.Error("ApplianceConfig(nosuch) != nil")
		}
	})

	t.Run("down-leaves-nothing", func(t *testing.T) {
		st := l.Status()
		var pids []int
		for _, a := range st.Appliances {
			pids = append(pids, a.PID)
		}
		for _, s := range st.Services {
			pids = append(pids, s.PID)
		}
		pids = append(pids, st.Controller.PID)
		if err := l.Down(); err != nil {
			t.Fatal(err)
		}
		checkGone(t, l.Instance(), pids)
		if err := l.Down(); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

// checkGone fails unless nothing of instance is left: no namespace, no
// state, none of pids running, no link of the lab in this namespace.
func checkGone(t *testing.T, instance string, pids []int) {
	t.Helper()
	if ns, err := instanceNetns(instance); err != nil || len(ns) > 0 {
		t.Errorf("namespaces left: %v (%v)", ns, err)
	}
	all, _ := listNetns()
	for _, n := range all {
		if strings.HasPrefix(n, netnsPrefix+instance+"-") {
			t.Errorf("namespace %s left", n)
		}
	}
	if _, err := os.Stat(instanceDir(DefaultStateRoot, instance)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state directory left: %v", err)
	}
	for _, pid := range pids {
		if pid != 0 && pidAlive(pid, 0) {
			if args, _ := procCmdline(pid); len(args) > 0 && filepath.Base(args[0]) == "causeway" {
				t.Errorf("process %d (%v) still runs", pid, args)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, lk := range links {
		if strings.HasPrefix(lk.Attrs().Alias, "to ") {
			t.Errorf("link %s (%s) in the test's namespace", lk.Attrs().Name, lk.Attrs().Alias)
		}
	}
}

// TestThreadsStayHome enters a namespace from many goroutines at once, in
// every way the package does, and then checks that no thread of this
// process is left in another network namespace than the process's own. It
// is not parallel: it runs while no other test enters namespaces.
func TestThreadsStayHome(t *testing.T) {
	needRoot(t)
	inst := UniqueInstance("thr")
	ns := netnsName(inst, "inet")
	if err := createNetns(ns); err != nil {
		t.Fatal(err)
	}
	defer Remove(DefaultStateRoot, inst, nil)
	errc := make(chan error, 50)
	for i := range 50 {
		go func() {
			switch i % 3 {
			case 0:
				errc <- writeSysctl(ns, "net/ipv4/ip_forward", "0")
			case 1:
				h, err := netlinkHandle(ns)
				if err == nil {
					h.Close()
				}
				errc <- err
			default:
				// The new namespace's loopback is down, which tells a socket
				// made inside it from one made here.
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_, err := dialInNetns(ctx, ns, "tcp", "127.0.0.1:9")
				if err == nil || !strings.Contains(err.Error(), "network is unreachable") {
					err = fmt.Errorf("dial in a new namespace: %v, want network is unreachable", err)
				} else {
					err = nil
				}
				errc <- err
			}
		}()
	}
	for range 50 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	want, _, err := statNsID(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		id, _, err := statNsID("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // the thread has exited
		}
		if id != want {
			t.Errorf("thread %s is in another network namespace", task.Name())
		}
	}
}

// TestSweepCrashedOwner builds an instance owned by a child process, kills
// the child, and checks that Sweep removes the instance, and only then.
func TestSweepCrashedOwner(t *testing.T) {
	t.Parallel()
	needRoot(t)
	owner := exec.Command("sleep", "300")
	// Should this test process die, the owner dies with it, and the next
	// run's Sweep removes the instance.
	owner.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer owner.Process.Kill()
	l := upLab(t, "crash", owner.Process.Pid)
	var pids []int
	for _, a := range l.Status().Appliances {
		pids = append(pids, a.PID)
	}

	if err := Sweep(DefaultStateRoot, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(DefaultStateRoot, l.Instance()); err != nil {
		t.Fatalf("Sweep removed an instance whose owner runs: %v", err)
	}

	owner.Process.Kill()
	owner.Wait()
	if err := Sweep(DefaultStateRoot, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	checkGone(t, l.Instance(), pids)
}

// TestSweepWithoutState checks the rule for namespaces that have no state:
// kept while young, removed once older than staleAge.
func TestSweepWithoutState(t *testing.T) {
	t.Parallel()
	needRoot(t)
	inst := UniqueInstance("nst")
	ns := netnsName(inst, "inet")
	if err := createNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetns(ns) })
	// A foreign namespace that merely looks like ours is never a candidate.
	foreign := netnsPrefix + inst + "-notanode"
	if err := createNetns(foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetns(foreign) })

	young := sweeper{stateRoot: DefaultStateRoot, minAge: staleAge}
	if young.netnsStale(ns) {
		t.Fatal("a namespace a few milliseconds old counts as stale")
	}
	old := sweeper{stateRoot: DefaultStateRoot, minAge: 0}
	if !old.netnsStale(ns) {
		t.Fatal("an old namespace without state does not count as stale")
	}
	if old.netnsStale(foreign) {
		t.Fatal("a namespace that is not the lab's counts as stale")
	}
	if err := Remove(DefaultStateRoot, inst, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(netnsPath(foreign)); err != nil {
		t.Errorf("Remove deleted %s, which is not a node of the lab: %v", foreign, err)
	}
	deleteNetns(foreign)
	checkGone(t, inst, nil)
}
