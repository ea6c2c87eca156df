package lab

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProcStat(t *testing.T) {
	state, start, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if state == 'Z' || start == 0 {
		t.Errorf("procStat(self) = %c, %d", state, start)
	}
	if !pidAlive(os.Getpid(), start) {
		t.Error("pidAlive(self) = false")
	}
	if pidAlive(os.Getpid(), start+1) {
		t.Error("pidAlive with another start time = true; a reused PID would pass as ours")
	}
	if pidAlive(0, 0) || pidAlive(-1, 0) {
		t.Error("pidAlive(0 or -1) = true")
	}
}

// startChild starts argv as a child and returns its record.
func startChild(t *testing.T, argv ...string) (procRecord, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	_, start, err := procStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	path, _ := exec.LookPath(argv[0])
	return procRecord{Name: "child", PID: cmd.Process.Pid, StartTime: start, Argv: append([]string{path}, argv[1:]...)}, cmd
}

func TestStopProcess(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	t.Run("sigterm", func(t *testing.T) {
		r, _ := startChild(t, sleep, "30")
		r.Argv[0] = sleep
		if !r.isOurs() {
			t.Fatalf("a running child with its own command line is not ours: %+v", r)
		}
		other := r
		other.Argv = []string{sleep, "31"}
		if other.isOurs() {
			t.Error("a process with another command line passes as ours")
		}
		if err := stopProcess(other, time.Second); err != nil {
			t.Fatal(err)
		}
		if !r.isOurs() {
			t.Fatal("stopProcess ended a process whose command line did not match")
		}
		begin := time.Now()
		if err := stopProcess(r, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if r.isOurs() {
			t.Error("still running after stopProcess")
		}
		if d := time.Since(begin); d > 2*time.Second {
			t.Errorf("SIGTERM took %v", d)
		}
		// Stopping again is a no-op.
		if err := stopProcess(r, time.Second); err != nil {
			t.Error(err)
		}
	})
	t.Run("sigkill", func(t *testing.T) {
		sh, err := exec.LookPath("sh")
		if err != nil {
			t.Skip("no sh")
		}
		// Ignores SIGTERM (the disposition survives the exec).
		r, _ := startChild(t, sh, "-c", `trap "" TERM; exec `+sleep+` 30`)
		r.Argv = []string{sleep, "30"}
		deadline := time.Now().Add(5 * time.Second)
		for !r.isOurs() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if err := stopProcess(r, 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if r.isOurs() {
			t.Error("still running after SIGKILL")
		}
	})
}
