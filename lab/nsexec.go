package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// ExecInNetns replaces the calling process with prog, looked up in PATH,
// running inside the network namespace ns: a name under /run/netns, or an
// absolute path to a namespace file such as /proc/PID/ns/net. argv[0] of
// the new program is prog. On success it does not return.
//
// Only the network namespace changes: the program shares the caller's
// mount namespace, so /sys still shows the caller's interfaces; programs
// that use netlink (ip, ss) see the namespace.
func ExecInNetns(ns, prog string, args []string) error {
	path := ns
	if !filepath.IsAbs(ns) {
		if ns == "" || strings.ContainsRune(ns, '/') || ns == "." || ns == ".." {
			return fmt.Errorf("bad network namespace name %q", ns)
		}
		path = netnsPath(ns)
	}
	bin, err := exec.LookPath(prog)
	if err != nil {
		return err
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", ns, err)
	}
	defer h.Close()
	// The namespace belongs to the thread, so the exec must come from the
	// thread that entered it. If the exec fails, onLockedThread moves the
	// thread back (or lets it die).
	err = onLockedThread(func() error {
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", ns, err)
		}
		if err := syscall.Exec(bin, append([]string{prog}, args...), os.Environ()); err != nil {
			return fmt.Errorf("exec %s: %w", prog, err)
		}
		return nil
	})
	return err
}
