package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, the same
// place `ip netns` uses, so that `ip netns list` and `ip netns exec` see
// the lab's namespaces.
const netnsDir = "/run/netns"

// netnsPath is the bind mount of the named namespace.
func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// Thread discipline. A network namespace belongs to an OS thread, not to a
// process, so every function here that enters a namespace runs on a fresh
// goroutine locked to its thread and moves the thread back before unlocking
// it. If moving back fails, the goroutine returns with the thread still
// locked, and the Go runtime then ends that thread instead of reusing it.

// onLockedThread runs fn on a locked OS thread and afterwards puts the
// thread back into the network namespace it started in.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading the thread's network namespace: %w", err)
			return
		}
		defer origin.Close()
		ferr := fn()
		if err := netns.Set(origin); err != nil {
			// Stay locked: the runtime ends the thread with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("returning to the original network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inNetns runs fn on a thread that is inside the named namespace.
func inNetns(name string, fn func() error) error {
	ns, err := netns.GetFromPath(netnsPath(name))
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer ns.Close()
	return onLockedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", name, err)
		}
		return fn()
	})
}

// netnsDirMu serializes making netnsDir a shared mount point.
var netnsDirMu sync.Mutex

// prepareNetnsDir makes netnsDir a mount point with shared propagation, as
// iproute2 does, so that namespace mounts made later show up in mount
// namespaces that were copied from this one.
func prepareNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
		}
		// Not a mount point yet: bind it onto itself, then retry.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", netnsDir, err)
		}
	}
}

// createNetns creates a named network namespace like `ip netns add`: a new
// namespace bind-mounted on netnsDir/name. The calling thread's namespace
// is left as it was.
func createNetns(name string) error {
	if err := prepareNetnsDir(); err != nil {
		return err
	}
	path := netnsPath(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	f.Close()
	err = onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return nil
}

// deleteNetns unmounts and removes a named namespace. The kernel frees the
// namespace, and every interface in it, once no process is left inside.
// A namespace that does not exist is not an error.
func deleteNetns(name string) error {
	path := netnsPath(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting network namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing network namespace %s: %w", name, err)
	}
	return nil
}

// listNetns returns the names of the named namespaces.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func statNsID(path string) (nsID, os.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, nil, err
	}
	fi, err := os.Stat(path)
	return nsID{uint64(st.Dev), st.Ino}, fi, err
}

// netnsAge is how long ago the named namespace was created: the time of
// its nsfs inode, which the kernel sets when it first hands the namespace
// out as a file.
func netnsAge(name string) (time.Duration, error) {
	_, fi, err := statNsID(netnsPath(name))
	if err != nil {
		return 0, err
	}
	return time.Since(fi.ModTime()), nil
}

// pidsInNetns returns the processes whose network namespace is one of ids.
func pidsInNetns(ids map[nsID]bool) []int {
	if len(ids) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, _, err := statNsID("/proc/" + e.Name() + "/ns/net")
		if err == nil && ids[id] {
			out = append(out, pid)
		}
	}
	return out
}

// writeSysctl sets a sysctl inside the named namespace. key is the path
// under /proc/sys, e.g. "net/ipv4/ip_forward"; the net/ tree there shows
// the namespace of the thread that opens it.
func writeSysctl(ns, key, value string) error {
	return inNetns(ns, func() error {
		if err := os.WriteFile("/proc/sys/"+key, []byte(value+"\n"), 0o644); err != nil {
			return fmt.Errorf("setting %s in %s: %w", strings.ReplaceAll(key, "/", "."), ns, err)
		}
		return nil
	})
}

// netlinkHandle returns a netlink handle whose socket lives in the named
// namespace; the handle works from any thread afterwards.
func netlinkHandle(ns string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNetns(ns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns, err)
	}
	return h, nil
}

// dialInNetns connects from inside the named namespace. The socket is made
// by a thread inside the namespace, and a socket keeps its namespace for
// life. addr must be a literal IP:port: resolving a name would send a
// query from outside the lab.
func dialInNetns(ctx context.Context, ns, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("lab: dial %s: %w", address, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("lab: dial %s: want a literal IP address, not a name", address)
	}
	var c net.Conn
	err = inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
