package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process kinds in the state file.
const (
	kindAppliance  = "appliance"
	kindService    = "service"
	kindController = "controller"
)

// How long a process gets to exit after SIGTERM before SIGKILL, and after
// SIGKILL before we give up on it.
const (
	stopTimeout = 10 * time.Second
	killTimeout = 5 * time.Second
)

// procRecord is one process the lab started, as kept in the state file.
// PID alone is not an identity (PIDs are reused): a process is ours only
// while its start time and command line still match the record.
type procRecord struct {
	Name string `json:"name"` // appliance, service or controller name
	Kind string `json:"kind"` // kindAppliance, kindService or kindController
	Node string `json:"node"`
	PID  int    `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat: clock ticks after boot.
	StartTime uint64 `json:"start_time"`
	// Argv is the command line of the program itself; Wrapper is the
	// command line it had before it entered its namespace and exec'd.
	Argv    []string `json:"argv"`
	Wrapper []string `json:"wrapper"`
	Log     string   `json:"log"`
}

// nsexecArgv is the command line that runs argv inside the namespace ns
// through the hidden `causeway lab nsexec` command of binary.
func nsexecArgv(binary, ns string, argv []string) []string {
	return append([]string{binary, "lab", "nsexec", ns, "--"}, argv...)
}

// procStat returns a process's state letter and start time.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// so count fields from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state), so field 22 (starttime) is f[19].
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

// procCmdline returns a process's arguments.
func procCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// pidAlive reports whether pid runs (is not a zombie) and, if start is not
// zero, is still the process that started at that time.
func pidAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	state, st, err := procStat(pid)
	if err != nil || state == 'Z' || state == 'X' {
		return false
	}
	return start == 0 || st == start
}

// isOurs reports whether the record's process still runs and is the one we
// started: same PID and start time, and the command line of the program or
// of its nsexec wrapper. A process inside execve can look gone or foreign
// for a moment: its command line reads empty or half-built, and when a
// thread other than the main one execs (as nsexec does), /proc/PID shows
// the old main thread as a zombie until the kernel has moved the exec'ing
// thread onto the process's PID. So a negative answer is only given once
// it has held for about 100 ms.
func (r procRecord) isOurs() bool {
	for try := 0; ; try++ {
		if pidAlive(r.PID, r.StartTime) {
			args, err := procCmdline(r.PID)
			if err == nil && (slices.Equal(args, r.Argv) || slices.Equal(args, r.Wrapper)) {
				return true
			}
		}
		if try == 5 {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// child is a process this process started; its exit status is known once
// done is closed.
type child struct {
	done  chan struct{}
	state *os.ProcessState // set before done is closed
}

// exitErr describes how the child exited, or is nil while it runs.
func (c *child) exitErr() error {
	if c == nil {
		return nil
	}
	select {
	case <-c.done:
		return fmt.Errorf("%w (%s)", errExited, c.state)
	default:
		return nil
	}
}

var errExited = errors.New("process exited")

// startProcess starts argv in namespace ns through binary's nsexec,
// detached from the caller's terminal (setsid), with stdout and stderr
// appended to logPath. env (KEY=value) is added to this process's
// environment; it keeps secrets such as a one-time token off the command
// line, which the state file records.
func startProcess(binary, ns string, argv []string, logPath string, env ...string) (procRecord, *child, error) {
	r := procRecord{Argv: argv, Wrapper: nsexecArgv(binary, ns, argv), Log: logPath}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return r, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(r.Wrapper[0], r.Wrapper[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = "/"
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return r, nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	r.PID = cmd.Process.Pid
	_, r.StartTime, err = procStat(r.PID)
	// Reap the child when it exits; a process that outlives this one is
	// reparented and reaped by init.
	c := &child{done: make(chan struct{})}
	go func() {
		cmd.Wait()
		c.state = cmd.ProcessState
		close(c.done)
	}()
	if err != nil {
		cmd.Process.Kill()
		return r, c, fmt.Errorf("reading the start time of %s: %w", argv[0], err)
	}
	return r, c, nil
}

// openOurs returns a pidfd for the record's process if it still is ours,
// or -1 if it is gone. Checking after opening the pidfd makes the check
// and the later signals refer to the same process.
func (r procRecord) openOurs() (int, error) {
	if r.PID <= 0 {
		return -1, nil
	}
	for try := 0; ; try++ {
		fd, err := unix.PidfdOpen(r.PID, 0)
		if errors.Is(err, unix.ESRCH) {
			// Gone, or moving onto its PID in execve: see isOurs.
			if try == 5 {
				return -1, nil
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("pidfd_open %d: %w", r.PID, err)
		}
		if !r.isOurs() {
			unix.Close(fd)
			return -1, nil
		}
		return fd, nil
	}
}

// waitPidfd waits until the process exits or timeout passes.
func waitPidfd(fd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds()))
		if n > 0 {
			return true
		}
		if (err != nil && !errors.Is(err, unix.EINTR)) || left == 0 {
			return false
		}
	}
}

// stopProcess ends a process the lab started: SIGTERM, then SIGKILL if it
// has not exited after termTimeout. A process that is gone, or whose PID
// now belongs to another program, is left alone.
func stopProcess(r procRecord, termTimeout time.Duration) error {
	fd, err := r.openOurs()
	if err != nil || fd < 0 {
		return err
	}
	defer unix.Close(fd)
	return stopPidfd(fd, r.PID, r.Name, termTimeout)
}

// killProcess ends a process the lab started with SIGKILL at once, the way
// a crash or a power cut would, and waits for it to exit.
func killProcess(r procRecord) error {
	fd, err := r.openOurs()
	if err != nil || fd < 0 {
		return err
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing %s (pid %d): %w", r.Name, r.PID, err)
	}
	if !waitPidfd(fd, killTimeout) {
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", r.Name, r.PID)
	}
	return nil
}

func stopPidfd(fd, pid int, name string, termTimeout time.Duration) error {
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", name, pid, err)
	}
	if waitPidfd(fd, termTimeout) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing %s (pid %d): %w", name, pid, err)
	}
	if waitPidfd(fd, killTimeout) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", name, pid)
}

// stopStray ends a process found inside one of the lab's namespaces (ids),
// which makes it the lab's to end even without a record: a shell left by
// `causeway lab exec`, say. The namespace is checked again once the pidfd
// pins the process, in case the PID was reused in between.
func stopStray(pid int, ids map[nsID]bool, termTimeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	id, _, err := statNsID("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil || !ids[id] {
		return nil
	}
	return stopPidfd(fd, pid, "process", termTimeout)
}

// tailFile returns up to the last n bytes of a file, for error messages.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return ""
	}
	return strings.TrimSpace(string(buf))
}
