package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller"
	"github.com/causeway-net/causeway/controller/ctl"
)

const (
	// applianceLog is an appliance's JSON log, in its state directory.
	applianceLog = "appliance.log"
	// controllerName names the controller's process record and log.
	controllerName = "controller"
	// controllerDataDir is the controller's data directory inside the
	// instance's state directory: database, CA and bootstrap token.
	controllerDataDir = "controller"
)

// ControllerURL is the base URL of the lab's controller, reachable from
// every node with a route to the underlay (not from outside the lab).
func (l *Lab) ControllerURL() string {
	return "https://" + l.t.controller.listen.String()
}

// Tenant is the controller tenant that holds the lab's sites.
func (l *Lab) Tenant() string { return l.t.controller.tenant }

func (l *Lab) controllerDir() string { return filepath.Join(l.dir, controllerDataDir) }

// caCert reads the controller's CA certificate, which it creates on its
// first start (TLS mode auto).
func (l *Lab) caCert() (*x509.Certificate, error) {
	b, err := os.ReadFile(filepath.Join(l.controllerDir(), controller.CAFile))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", controller.CAFile)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// CAFingerprint is the hex SHA-256 of the controller's CA certificate,
// which the appliances pin.
func (l *Lab) CAFingerprint() (string, error) {
	c, err := l.caCert()
	if err != nil {
		return "", fmt.Errorf("lab: controller CA: %w", err)
	}
	return controller.Fingerprint(c), nil
}

// operatorToken is the bootstrap operator API token the controller wrote
// on its first start.
func (l *Lab) operatorToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(l.controllerDir(), controller.OperatorTokenFile))
	if err != nil {
		return "", fmt.Errorf("lab: operator token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

type requestIDKey struct{}

// WithRequestID makes the controller API calls that Lab.Ctl and the lab's
// controller client make with ctx send X-Request-ID: id. The controller
// carries the id into the netmaps the call changes, and each appliance
// logs it when it applies one.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// requestIDTransport adds the request id of WithRequestID.
type requestIDTransport struct{ base http.RoundTripper }

func (t requestIDTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if id, _ := r.Context().Value(requestIDKey{}).(string); id != "" {
		r = r.Clone(r.Context())
		r.Header.Set("X-Request-ID", id)
	}
	return t.base.RoundTrip(r)
}

// ControllerClient returns an HTTP client for the controller's API: its
// connections start in the controller's own namespace, and it trusts only
// the controller's CA. It sends no credentials of its own; bound requests
// with a context.
func (l *Lab) ControllerClient() (*http.Client, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctlClient != nil {
		return l.ctlClient, nil
	}
	ca, err := l.caCert()
	if err != nil {
		return nil, fmt.Errorf("lab: controller CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	node := l.t.controller.node
	l.ctlClient = &http.Client{Transport: requestIDTransport{&http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.DialContext(ctx, node, network, addr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}}
	return l.ctlClient, nil
}

// CtlConfig is the configuration of `causeway ctl` for the lab's
// controller, as the operator. Out is left to the caller.
func (l *Lab) CtlConfig() (ctl.Config, error) {
	tok, err := l.operatorToken()
	if err != nil {
		return ctl.Config{}, err
	}
	c, err := l.ControllerClient()
	if err != nil {
		return ctl.Config{}, err
	}
	return ctl.Config{Server: l.ControllerURL(), Token: tok, HTTPClient: c}, nil
}

// Ctl runs one `causeway ctl` command against the lab's controller as the
// operator (e.g. "appliance", "list", "demo") and returns what it prints.
// Lists come as JSON. See WithRequestID to tag the call.
func (l *Lab) Ctl(ctx context.Context, args ...string) (string, error) {
	cfg, err := l.CtlConfig()
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	cfg.Out, cfg.JSON = &out, true
	err = ctl.Run(ctx, cfg, args)
	return out.String(), err
}

// ctlJSON runs a ctl command and decodes its JSON output into v.
func (l *Lab) ctlJSON(ctx context.Context, v any, args ...string) error {
	out, err := l.Ctl(ctx, args...)
	if err != nil {
		return fmt.Errorf("lab: ctl %s: %w", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("lab: ctl %s: decoding %q: %w", strings.Join(args, " "), out, err)
	}
	return nil
}

// controllerArgv is the controller's command line: embedded SQLite in the
// data directory, TLS with its own CA, a certificate for its underlay
// address, usage exported to the meter sink (its credential travels in
// the environment), retried at least every few seconds.
func (l *Lab) controllerArgv() []string {
	c := l.t.controller
	return []string{l.binary, "controller",
		"--listen", c.listen.String(),
		"--data-dir", l.controllerDir(),
		"--tls", "auto",
		"--tls-hosts", c.listen.Addr().String(),
		"--metering-url", l.MeterSinkURL(),
		"--metering-backoff-max", meteringBackoffMax.String(),
		"--metering-max-attempts", strconv.Itoa(meteringMaxAttempts),
	}
}

// startController starts the meter sink (if it does not run) and the
// controller in the controller's namespace, and waits until both are
// ready.
func (l *Lab) startController(ctx context.Context) error {
	auth, err := l.meterSinkAuth()
	if err != nil {
		return err
	}
	if err := l.startMeterSink(ctx, auth); err != nil {
		return err
	}
	r, err := l.startRecorded(controllerName, kindController, l.t.controller.node, l.LogPath(controllerName), l.controllerArgv(), "CAUSEWAY_METERING_AUTH="+auth)
	if err != nil {
		return fmt.Errorf("lab: controller: %w", err)
	}
	err = poll(ctx, func(ctx context.Context) error {
		if err := l.exited(controllerName, r); err != nil {
			return err
		}
		hc, err := l.ControllerClient()
		if err != nil {
			return err // no CA yet
		}
		return httpGet(ctx, hc, l.ControllerURL()+"/readyz", "")
	})
	if err != nil {
		return fmt.Errorf("lab: controller not ready: %w%s", err, logTail(r.Log))
	}
	l.log.Info("controller ready", "url", l.ControllerURL(), "pid", r.PID)
	return nil
}

// startRecorded starts argv in node's namespace, with its output in the
// file log and env added to its environment, and records it in the state
// as name: even a failed start that left a process, so that Down finds it.
func (l *Lab) startRecorded(name, kind, node, log string, argv []string, env ...string) (procRecord, error) {
	r, c, err := startProcess(l.binary, netnsName(l.instance, node), argv, log, env...)
	r.Name, r.Kind, r.Node = name, kind, node
	l.mu.Lock()
	defer l.mu.Unlock()
	if c != nil {
		l.setChildLocked(name, c)
	}
	if r.PID != 0 {
		if serr := l.setProcLocked(r); serr != nil && err == nil {
			err = serr
		}
	}
	return r, err
}

// provision creates the lab's tenant and sites through the API and returns
// one fresh enrollment token per appliance (two for the pair's site).
func (l *Lab) provision(ctx context.Context) (map[string]string, error) {
	tn := l.Tenant()
	var v struct {
		Token string `json:"token"`
	}
	if err := l.ctlJSON(ctx, &v, "tenant", "create", tn); err != nil {
		return nil, err
	}
	if err := l.ctlJSON(ctx, &v, "tenant", "update", tn, "--billing-customer", BillingCustomer); err != nil {
		return nil, err
	}
	for _, a := range l.t.sites() {
		args := []string{"site", "create", tn, a.site, "--kind", a.kind}
		for _, p := range a.lan {
			args = append(args, "--prefix", p.String())
		}
		if err := l.ctlJSON(ctx, &v, args...); err != nil {
			return nil, err
		}
	}
	tokens := map[string]string{}
	for _, a := range l.t.appliances {
		if err := l.ctlJSON(ctx, &v, "token", "create", tn, "--site", a.site, "--ttl", "10m",
			"--description", "causeway lab: "+a.name); err != nil {
			return nil, err
		}
		if v.Token == "" {
			return nil, fmt.Errorf("lab: the controller made no enrollment token for %s", a.site)
		}
		tokens[a.name] = v.Token
	}
	return tokens, nil
}

// controllerRecord returns the controller's process record.
func (l *Lab) controllerRecord() (procRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reloadLocked()
	if r := l.procLocked(controllerName); r != nil {
		return *r, true
	}
	return procRecord{}, false
}

// StopController stops the controller gracefully (SIGTERM, SIGKILL after
// a timeout) and waits for it to exit. The appliances keep running on
// their last netmap. Stopping a stopped controller is not an error.
func (l *Lab) StopController() error {
	r, ok := l.controllerRecord()
	if !ok {
		return nil
	}
	if err := stopProcess(r, stopTimeout); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.log.Info("controller stopped")
	return nil
}

// KillController ends the controller with SIGKILL, as a crash would, and
// waits for it to exit.
func (l *Lab) KillController() error {
	r, ok := l.controllerRecord()
	if !ok {
		return nil
	}
	if err := killProcess(r); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.log.Info("controller killed")
	return nil
}

// StartController starts the controller again (after StopController or
// KillController) on its existing data directory, and waits until it is
// ready. The appliances find it again on their own.
func (l *Lab) StartController(ctx context.Context) error {
	if r, ok := l.controllerRecord(); ok && r.isOurs() {
		return fmt.Errorf("lab: the controller is already running (pid %d)", r.PID)
	}
	wctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return l.startController(wctx)
}
