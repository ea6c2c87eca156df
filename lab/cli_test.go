package lab

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// causeway runs the built binary and returns its stdout, stderr and exit
// status.
func causeway(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(testBinary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAUSEWAY_LAB_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running causeway %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// TestCLI drives `causeway lab` the way a person or a script does.
func TestCLI(t *testing.T) {
	t.Parallel()
	needRoot(t)
	inst := UniqueInstance("cli")
	t.Cleanup(func() { Remove(DefaultStateRoot, inst, nil) })

	for _, args := range [][]string{
		{"lab", "--help"}, {"lab", "up", "--help"}, {"lab", "status", "--help"},
		{"lab", "down", "--help"}, {"lab", "exec", "--help"}, {"lab", "ctl", "--help"},
	} {
		if _, stderr, code := causeway(t, args...); code != 0 || !strings.Contains(stderr, "Usage: causeway lab") {
			t.Errorf("causeway %v: exit %d:\n%s", args, code, stderr)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--instance", "Bad!"}, "--instance"},
		{[]string{"lab", "status", "--nosuch"}, "flag provided but not defined"},
		{[]string{"lab", "nosuch"}, "unknown lab command"},
		{[]string{"lab", "exec", "--instance", inst}, "want a node and a command"},
		{[]string{"lab", "down", "extra"}, "unexpected argument"},
		{[]string{"lab", "ctl", "--instance", inst, "appliance"}, "want a ctl command"},
		{[]string{"lab", "up", "--state-root", "relative"}, "--state-root"},
	} {
		_, stderr, code := causeway(t, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("causeway %v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, stderr, code := causeway(t, "lab", "status", "--instance", inst); code != 1 || !strings.Contains(stderr, "is running") {
		t.Errorf("status of a missing lab: exit %d: %s", code, stderr)
	}

	stdout, stderr, code := causeway(t, "lab", "up", "--instance", inst)
	if code != 0 {
		t.Fatalf("lab up: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "causeway lab exec --instance "+inst+" office-1-host -- curl -s http://10.20.0.10/") ||
		!strings.Contains(stdout, "causeway lab ctl --instance "+inst+" appliance list demo") {
		t.Errorf("lab up prints no hint to try:\n%s", stdout)
	}
	if _, stderr, code := causeway(t, "lab", "up", "--instance", inst); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("second lab up: exit %d: %s", code, stderr)
	}

	stdout, stderr, code = causeway(t, "lab", "status", "--instance", inst, "--json")
	if code != 0 {
		t.Fatalf("lab status --json: exit %d: %s", code, stderr)
	}
	var st struct {
		Instance string `json:"instance"`
		Hosts    []struct {
			Name  string   `json:"name"`
			Site  string   `json:"site"`
			Netns string   `json:"netns"`
			Addrs []string `json:"addrs"`
		} `json:"hosts"`
		Appliances []struct {
			Name    string `json:"name"`
			Site    string `json:"site"`
			Netns   string `json:"netns"`
			PID     int    `json:"pid"`
			Uplinks []struct {
				Name string `json:"name"`
				Addr string `json:"addr"`
			} `json:"uplinks"`
			OverlayAddr string `json:"overlay_addr"`
			Pair        *struct {
				Role   string `json:"role"`
				Active bool   `json:"active"`
				Term   uint64 `json:"term"`
			} `json:"pair"`
		} `json:"appliances"`
		Services []struct {
			Name string `json:"name"`
			Host string `json:"host"`
			URL  string `json:"url"`
		} `json:"services"`
		Controller struct {
			URL           string `json:"url"`
			Netns         string `json:"netns"`
			PID           int    `json:"pid"`
			CAFingerprint string `json:"ca_fingerprint"`
		} `json:"controller"`
		Pairs []struct {
			Site    string   `json:"site"`
			Active  string   `json:"active"`
			Members []string `json:"members"`
		} `json:"pairs"`
	}
	// Decode by the documented field names only: fields may be added.
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("decoding status: %v\n%s", err, stdout)
	}
	if st.Instance != inst || len(st.Hosts) != 4 || len(st.Appliances) != 4 || len(st.Services) != 2 || len(st.Pairs) != 1 {
		t.Fatalf("status: %s", stdout)
	}
	for _, h := range st.Hosts {
		if h.Name == "" || h.Site == "" || h.Netns != "cw-"+inst+"-"+h.Name || len(h.Addrs) == 0 || strings.Contains(h.Addrs[0], "/") {
			t.Errorf("host %+v", h)
		}
	}
	for _, a := range st.Appliances {
		if a.PID <= 0 || a.Netns != "cw-"+inst+"-"+a.Name || !strings.HasPrefix(a.Name, a.Site) || a.OverlayAddr == "" ||
			len(a.Uplinks) == 0 || strings.Contains(a.Uplinks[0].Addr, "/") {
			t.Errorf("appliance %+v", a)
		}
		var ups []string
		for _, u := range a.Uplinks {
			ups = append(ups, u.Name)
		}
		if want := map[string]string{memberA: "wan1", memberB: "wan2"}[a.Name]; strings.Join(ups, ",") != cmp.Or(want, "wan0") {
			t.Errorf("appliance %+v", a)
		}
		// lab up returns with one active member of the pair.
		if wantPair := a.Name == memberA || a.Name == memberB; (a.Pair != nil) != wantPair ||
			(wantPair && (a.Pair.Active != (a.Name == memberA) || a.Pair.Role == "" || a.Pair.Term == 0)) {
			t.Errorf("appliance %s: pair %+v", a.Name, a.Pair)
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(a.PID)); err != nil {
			t.Errorf("appliance %s: pid %d does not run", a.Name, a.PID)
		}
	}
	if p := st.Pairs[0]; p.Site != "office-1" || p.Active != memberA || strings.Join(p.Members, ",") != memberA+","+memberB {
		t.Errorf("pair %+v", p)
	}
	if sv := st.Services[0]; sv.Name != "backend-http" || sv.Host != "vpc-1-backend-1" || sv.URL != "http://10.20.0.10/" {
		t.Errorf("service %+v", sv)
	}
	if sv := st.Services[1]; sv.Name != "web-http" || sv.Host != "web-1" || sv.URL != "http://198.19.0.10/" {
		t.Errorf("service %+v", sv)
	}
	if c := st.Controller; c.URL != "https://198.18.0.2:8443" || c.Netns != "cw-"+inst+"-cloud" || c.PID <= 0 || len(c.CAFingerprint) != 64 {
		t.Errorf("controller %+v", c)
	}

	// ctl: the operator's view, through the controller's API.
	stdout, stderr, code = causeway(t, "lab", "ctl", "--instance", inst, "appliance", "list", "demo")
	if code != 0 || !strings.Contains(stdout, "OVERLAY_ADDR") {
		t.Errorf("lab ctl appliance list: exit %d:\n%s%s", code, stdout, stderr)
	}
	for _, a := range st.Appliances {
		if !strings.Contains(stdout, a.Name) || !strings.Contains(stdout, a.OverlayAddr) {
			t.Errorf("lab ctl appliance list lacks %s (%s):\n%s", a.Name, a.OverlayAddr, stdout)
		}
	}
	if _, stderr, code := causeway(t, "lab", "ctl", "--instance", inst, "appliance", "get", "demo", "nosuch"); code != 1 || !strings.Contains(stderr, "404") {
		t.Errorf("lab ctl appliance get of a missing appliance: exit %d: %s", code, stderr)
	}

	stdout, _, code = causeway(t, "lab", "status", "--instance", inst)
	if code != 0 || !strings.Contains(stdout, "APPLIANCE") || !strings.Contains(stdout, "cw-"+inst+"-vpc-1") {
		t.Errorf("lab status: exit %d:\n%s", code, stdout)
	}

	// exec: inside the namespace, with the command's exit status.
	stdout, stderr, code = causeway(t, "lab", "exec", "--instance", inst, "office-1-host", "--", "cat", "/proc/net/dev")
	if code != 0 || !strings.Contains(stdout, "eth0:") || strings.Contains(stdout, "wan0:") {
		t.Errorf("lab exec cat /proc/net/dev: exit %d:\n%s%s", code, stdout, stderr)
	}
	if _, _, code := causeway(t, "lab", "exec", "--instance", inst, "inet", "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("lab exec sh -c 'exit 3': exit %d", code)
	}
	if _, stderr, code := causeway(t, "lab", "exec", "--instance", inst, "nosuch", "--", "true"); code != 2 || !strings.Contains(stderr, "no node") {
		t.Errorf("lab exec on an unknown node: exit %d: %s", code, stderr)
	}

	// impair: the link may come before or after the flags; lab down
	// removes the delay stage with everything else.
	stdout, stderr, code = causeway(t, "lab", "impair", "--instance", inst, "office-1b/wan2", "--loss", "2%", "--delay", "5ms")
	if code != 0 || strings.TrimSpace(stdout) != "office-1b/wan2: loss 2%, delay 5ms" {
		t.Errorf("lab impair: exit %d:\n%s%s", code, stdout, stderr)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"office-1a/wan1"}, 2, "nothing to do"},
		{[]string{"office-1a/wan1", "--loss", "120%"}, 2, "percentage"},
		{[]string{"office-1a/wan1", "--clear", "--down"}, 2, "--clear"},
		{[]string{"office-1a"}, 2, "NODE/IFACE"},
		{[]string{"office-1a/wan2", "--down"}, 1, "not a link to inet"},
		{[]string{"home-1/wan0", "--down"}, 1, "not a link to inet"},
	} {
		args := append([]string{"lab", "impair", "--instance", inst}, tc.args...)
		if _, stderr, code := causeway(t, args...); code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("lab impair %v: exit %d: %s", tc.args, code, stderr)
		}
	}

	if _, stderr, code := causeway(t, "lab", "down", "--instance", inst); code != 0 {
		t.Fatalf("lab down: exit %d: %s", code, stderr)
	}
	var pids []int
	for _, a := range st.Appliances {
		pids = append(pids, a.PID)
	}
	checkGone(t, inst, pids)
	if _, stderr, code := causeway(t, "lab", "down", "--instance", inst); code != 0 {
		t.Errorf("second lab down: exit %d: %s", code, stderr)
	}
}
