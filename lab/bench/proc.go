package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// How long a process the bench started gets to exit after SIGTERM, and
// after SIGKILL.
const (
	termGrace = 5 * time.Second
	killGrace = 5 * time.Second
)

// proc is a child process the bench started. The bench stops it itself, by
// signalling the PID it got from starting it, and never any other process.
//
// Every child is put in a process group of its own, so that a Ctrl-C on the
// terminal reaches the bench alone and the bench decides the order things
// stop in; and bench.command makes it get SIGTERM should the bench die
// first.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer // stderr, and stdout unless the caller took it
	done chan struct{}
	err  error // the result of Wait; set before done is closed
}

// startProc starts cmd. If cmd.Stdout is nil, stdout goes to the same tail
// buffer as stderr.
func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	p := &proc{name: name, cmd: cmd, out: &tailBuffer{max: 4 << 10}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	cmd.Stderr = p.out
	ownProcess(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// ownProcess makes the child leave our process group and asks for SIGTERM
// when we die. (A parent-death signal does not survive a multi-threaded
// wrapper that execs from another thread, which is why bench.command
// also runs setpriv.)
func ownProcess(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid = true
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	}
}

// pid is the process id the child was started with.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit. If ctx ends first, it stops the
// process and returns ctx's error.
func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		p.stop()
		return ctx.Err()
	}
}

// stop sends SIGTERM to the process, then SIGKILL if it has not exited
// after termGrace. It returns nil once the process has exited, whatever its
// exit status.
func (p *proc) stop() error {
	if p.exited() {
		return nil
	}
	// os.Process signals through a pidfd where the kernel has them, so a
	// recycled PID is never hit.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.name, p.pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(termGrace):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s (pid %d): %w", p.name, p.pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(killGrace):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid())
	}
}

// tailBuffer keeps the last max bytes written to it. It is safe for
// concurrent use.
type tailBuffer struct {
	max int

	mu  sync.Mutex // guards buf
	buf []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

// String returns what the buffer holds, trimmed, on one line.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(bytes.ToValidUTF8(t.buf, nil)))
	return strings.Join(strings.Fields(s), " ")
}

// limitedBuffer collects up to max bytes and drops the rest.
type limitedBuffer struct {
	max int
	buf bytes.Buffer
}

func (l *limitedBuffer) Write(b []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

// exitCode returns the exit status in err, or -1 if err is not an exit.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
