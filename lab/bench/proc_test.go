package bench

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestProcStop(t *testing.T) {
	p, err := startProc("sleep", exec.Command("sleep", "30"))
	if err != nil {
		t.Fatal(err)
	}
	if pgid, err := syscall.Getpgid(p.pid()); err != nil || pgid != p.pid() {
		t.Errorf("child's process group is %d (%v), want its own, %d", pgid, err, p.pid())
	}
	start := time.Now()
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if !p.exited() || time.Since(start) > termGrace {
		t.Errorf("stop took %s; the process should have exited on SIGTERM", time.Since(start))
	}
	if err := p.stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

func TestProcWaitCancel(t *testing.T) {
	p, err := startProc("sleep", exec.Command("sleep", "30"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.wait(ctx); err != context.DeadlineExceeded {
		t.Errorf("wait = %v, want the context's error", err)
	}
	if !p.exited() {
		t.Error("the process still runs after its wait was cancelled")
	}
}

func TestProcOutput(t *testing.T) {
	p, err := startProc("sh", exec.Command("sh", "-c", "echo out; echo err >&2; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	err = p.wait(context.Background())
	if exitCode(err) != 3 {
		t.Errorf("exit code %d (%v), want 3", exitCode(err), err)
	}
	if got := p.out.String(); got != "out err" {
		t.Errorf("output %q, want %q", got, "out err")
	}
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 10}
	tb.Write([]byte("0123456789"))
	tb.Write([]byte("ab\ncd"))
	if got := tb.String(); got != "56789ab cd" {
		t.Errorf("tail = %q, want %q", got, "56789ab cd")
	}
	lb := &limitedBuffer{max: 4}
	if n, _ := lb.Write([]byte("abcdef")); n != 6 || lb.buf.String() != "abcd" {
		t.Errorf("limited buffer kept %q (n %d), want abcd", lb.buf.String(), n)
	}
	if !strings.Contains((&cmdError{node: "n", cmd: "ip x", err: context.Canceled, stderr: "boom"}).Error(), "n: ip x: context canceled: boom") {
		t.Error("cmdError text")
	}
}
