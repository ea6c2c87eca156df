package ctlbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// controllerProc is the controller under test, a child process.
type controllerProc struct {
	cmd   *exec.Cmd
	url   string
	token string
	done  chan struct{} // closed when the process has exited
	// tail keeps the last lines it printed, for error messages.
	mu   sync.Mutex
	tail []string
}

// buildBinary builds cmd/causeway of the module in dir into out.
func buildBinary(ctx context.Context, dir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/causeway")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the causeway binary: %v\n%s", err, b)
	}
	return nil
}

// moduleRoot finds the root of the Go module holding the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the source tree (go env GOMOD): %w", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the causeway source tree: give Options.Binary (--binary) or run from the tree")
	}
	return filepath.Dir(mod), nil
}

// startController runs `causeway controller` on a free loopback port with
// TLS off and waits until it listens.
func startController(ctx context.Context, binary, dataDir, db, logLevel string) (*controllerProc, error) {
	args := []string{"controller", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--tls", "off", "--log-level", logLevel}
	if db != "" {
		args = append(args, "--db", db)
	}
	cmd := exec.Command(binary, args...)
	// Keep the caller's environment but none of the controller's own
	// settings, which would override nothing (flags win) yet confuse.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAUSEWAY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the controller: %w", err)
	}
	c := &controllerProc{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go c.readLog(stdout, addr)
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	select {
	case a := <-addr:
		c.url = "http://" + a
	case <-c.done:
		return nil, fmt.Errorf("the controller exited at start:\n%s", c.lastLines())
	case <-time.After(30 * time.Second):
		c.stop()
		return nil, fmt.Errorf("the controller did not start listening within 30s:\n%s", c.lastLines())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "operator.token"))
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("reading the bootstrap operator token: %w", err)
	}
	c.token = strings.TrimSpace(string(b))
	return c, nil
}

// readLog drains the controller's output (JSON log lines), sends the
// address from its "controller listening" line to addr, and keeps a tail.
func (c *controllerProc) readLog(r io.Reader, addr chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sent := false
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		if c.tail = append(c.tail, line); len(c.tail) > 20 {
			c.tail = c.tail[1:]
		}
		c.mu.Unlock()
		if sent || !strings.Contains(line, "controller listening") {
			continue
		}
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "controller listening" && rec.Addr != "" {
			addr <- rec.Addr
			sent = true
		}
	}
	io.Copy(io.Discard, r)
}

func (c *controllerProc) lastLines() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}

func (c *controllerProc) pid() int { return c.cmd.Process.Pid }

// stop ends the controller by its pid: SIGTERM, and SIGKILL if it has not
// exited within 15 s.
func (c *controllerProc) stop() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
		return errors.New("the controller did not stop on SIGTERM within 15s; killed it")
	}
}
