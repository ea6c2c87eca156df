package appliance

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// Defaults applied to fields a config file leaves out.
const (
	DefaultInterface  = "cw0"
	DefaultListenPort = 51820
	DefaultHTTPListen = "127.0.0.1:9180"
	// MaxConfigSize bounds the config file we are willing to read.
	MaxConfigSize = 4 << 20
	// DefaultProbeInterval is the mean time between two probes of a path.
	DefaultProbeInterval = probes.DefaultInterval
	// MinProbeInterval and MaxProbeInterval bound probe_interval.
	MinProbeInterval = 10 * time.Millisecond
	MaxProbeInterval = time.Minute
	// MaxSLADelay bounds the delays of an SLA (max_rtt, max_jitter).
	MaxSLADelay = time.Minute
)

// OverlayRange is the carrier-grade NAT range every overlay address lives in.
var OverlayRange = netmap.OverlayRange

// Config is a validated appliance configuration. Build one with ParseConfig
// or LoadConfig; a Config that did not come from there may be invalid.
type Config struct {
	Name        string
	StateDir    string
	Interface   string
	OverlayAddr netip.Addr
	ListenPort  uint16
	// MTU of the overlay interface; 0 means derive it from the underlay.
	MTU         int
	LANPrefixes []netip.Prefix
	Peers       []PeerConfig
	// HTTPListen is where /healthz and /metrics are served; empty disables.
	HTTPListen string
	// Uplinks are the WAN attachments WireGuard traffic leaves on, one
	// pinned socket each (the multipath bind). Empty means one socket per
	// address family, routed by the kernel.
	Uplinks []Uplink
	// ProbeKey signs the path probes; it is shared by the appliances of a
	// tenant. The zero Key turns probing off: each peer's traffic then
	// stays on its first path.
	ProbeKey probes.Key
	// ProbeAccepted are further keys whose probes are answered and
	// accepted (key rotation: the next key before it becomes current, or
	// the previous one after), at most probes.MaxAccepted.
	ProbeAccepted []probes.Key
	// ProbeInterval is the mean time between two probes of a path.
	ProbeInterval time.Duration
	// SLA is what every path should meet (the zero SLA sets no limits);
	// PeerConfig.SLA overrides it for one peer.
	SLA probes.SLA
	// Pair is this appliance's place in its site's pair; nil when the
	// site has one appliance (see follow.go).
	Pair *PairSelf
	// Gateway, if set, makes the appliance the LAN's Internet gateway
	// over its uplinks (gateway.go).
	Gateway *GatewayConfig
}

// Uplink is one WAN attachment.
type Uplink struct {
	Name      string     // for logs and metrics
	Interface string     // the socket is pinned to it (SO_BINDTODEVICE)
	Addr      netip.Addr // optional local IPv4 address to bind; zero: any on Interface
}

// PeerConfig is one remote appliance.
type PeerConfig struct {
	Name string
	// Site is the id of the peer's site, which its traffic is metered
	// against; empty means the peer's Name (a static config file that
	// does not say).
	Site        string
	PublicKey   wgkey.PublicKey
	OverlayAddr netip.Addr
	// Endpoints are the peer's underlay addresses. A peer without endpoints
	// (a site behind NAT that only dials out) is reached once it has
	// contacted us.
	Endpoints []netip.AddrPort
	// Prefixes are the LAN prefixes the peer announces.
	Prefixes []netip.Prefix
	// Keepalive is the persistent keepalive interval; 0 disables it.
	Keepalive time.Duration
	// SLA, if not nil, replaces Config.SLA for the paths to this peer (a
	// site pair with its own service level).
	SLA *probes.SLA
	// Pair marks the peer as one of the two appliances of a site; the
	// two announce the same prefixes, which go to one of them (see
	// follow.go).
	Pair *PairMember
}

// MeterSite is the site the peer's traffic is metered against: Site, or
// the peer's name when the config does not say.
func (p PeerConfig) MeterSite() string {
	if p.Site != "" {
		return p.Site
	}
	return p.Name
}

// PathSLA is the SLA the paths to p must meet under c.
func (c *Config) PathSLA(p PeerConfig) probes.SLA {
	if p.SLA != nil {
		return *p.SLA
	}
	return c.SLA
}

// AllowedPrefixes is what WireGuard accepts from, and routes to, the peer:
// its overlay address and its LAN prefixes.
func (p PeerConfig) AllowedPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, 1+len(p.Prefixes))
	out = append(out, netip.PrefixFrom(p.OverlayAddr, p.OverlayAddr.BitLen()))
	return append(out, p.Prefixes...)
}

// fileConfig is the on-disk JSON shape. Every field is a plain string or
// number so that each parse error can name the field it came from.
type fileConfig struct {
	Name        string       `json:"name"`
	StateDir    string       `json:"state_dir"`
	Interface   string       `json:"interface"`
	OverlayAddr string       `json:"overlay_addr"`
	ListenPort  *int         `json:"listen_port"`
	MTU         int          `json:"mtu"`
	LANPrefixes []string     `json:"lan_prefixes"`
	Peers       []filePeer   `json:"peers"`
	HTTPListen  *string      `json:"http_listen"`
	Uplinks     []fileUplink `json:"uplinks"`

	ProbeKey          *fileProbeKey  `json:"probe_key,omitempty"`
	ProbeAcceptedKeys []fileProbeKey `json:"probe_accepted_keys,omitempty"`
	ProbeInterval     string         `json:"probe_interval,omitempty"`
	SLA               *fileSLA       `json:"sla,omitempty"`
	Pair              *filePairSelf  `json:"pair,omitempty"`
	Gateway           *fileGateway   `json:"gateway,omitempty"`
}

// fileProbeKey is a probe key: its id and its 32-byte secret in base64.
type fileProbeKey struct {
	ID     *uint32 `json:"id"`
	Secret string  `json:"secret"`
}

// fileSLA is an SLA; a field left out sets no limit.
type fileSLA struct {
	MaxLossPercent float64 `json:"max_loss_percent,omitempty"`
	MaxRTT         string  `json:"max_rtt,omitempty"`
	MaxJitter      string  `json:"max_jitter,omitempty"`
}

type fileUplink struct {
	Name      string `json:"name"`
	Interface string `json:"interface"`
	Addr      string `json:"addr,omitempty"`
}

type filePeer struct {
	Name        string          `json:"name"`
	Site        string          `json:"site,omitempty"`
	PublicKey   string          `json:"public_key"`
	OverlayAddr string          `json:"overlay_addr"`
	Endpoints   []string        `json:"endpoints"`
	Prefixes    []string        `json:"prefixes"`
	Keepalive   string          `json:"keepalive"`
	SLA         *fileSLA        `json:"sla,omitempty"`
	Pair        *filePairMember `json:"pair,omitempty"`
}

// FieldError is one problem with one field of a config file: the same type
// a netmap's decoder reports, so both read alike.
type FieldError = netmap.FieldError

// ConfigError lists every problem found in a config file.
type ConfigError struct {
	Source string // file name, or "" for in-memory input
	Errs   []error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("invalid config")
	if e.Source != "" {
		b.WriteString(" " + e.Source)
	}
	for i, err := range e.Errs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *ConfigError) Unwrap() []error { return e.Errs }

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxConfigSize+1)); err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	cfg, err := ParseConfig(buf.Bytes())
	var ce *ConfigError
	if errors.As(err, &ce) {
		ce.Source = path
	}
	return cfg, err
}

// ParseConfig decodes and validates a JSON config. The error, if any, is a
// *ConfigError listing every problem with the field it concerns.
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > MaxConfigSize {
		return nil, &ConfigError{Errs: []error{errors.New("file larger than 4 MiB")}}
	}
	var fc fileConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return nil, &ConfigError{Errs: []error{jsonError(data, err)}}
	}
	if dec.More() {
		return nil, &ConfigError{Errs: []error{errors.New("unexpected data after the JSON object")}}
	}
	v := &validator{}
	cfg := v.config(&fc)
	if len(v.errs) > 0 {
		return nil, &ConfigError{Errs: v.errs}
	}
	return cfg, nil
}

// jsonError turns a decoder error into one that names the field or the
// line and column.
func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := lineCol(data, se.Offset)
		return fmt.Errorf("line %d, column %d: %v", line, col, se)
	case errors.As(err, &te):
		return &FieldError{Field: netmap.JSONPath(te.Field), Msg: fmt.Sprintf("want %s, got JSON %s", te.Type, te.Value)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return &FieldError{Field: strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`), Msg: "unknown field"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("empty or truncated file")
	}
	return err
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line, col := 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}

type validator struct{ errs []error }

func (v *validator) fail(field, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	siteRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

func (v *validator) config(fc *fileConfig) *Config {
	c := &Config{
		Name:       fc.Name,
		StateDir:   fc.StateDir,
		Interface:  fc.Interface,
		ListenPort: DefaultListenPort,
		MTU:        fc.MTU,
		HTTPListen: DefaultHTTPListen,
	}
	if !nameRE.MatchString(fc.Name) {
		v.fail("name", "want 1-63 lower-case letters, digits and '-', got %q", fc.Name)
	}
	switch {
	case fc.StateDir == "":
		v.fail("state_dir", "required (the directory that keeps the private key)")
	case !filepath.IsAbs(fc.StateDir):
		v.fail("state_dir", "want an absolute path, got %q", fc.StateDir)
	}
	if c.Interface == "" {
		c.Interface = DefaultInterface
	} else if !ifaceRE.MatchString(c.Interface) || c.Interface == "." || c.Interface == ".." {
		v.fail("interface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", c.Interface)
	}
	c.OverlayAddr = v.overlayAddr("overlay_addr", fc.OverlayAddr)
	if fc.ListenPort != nil {
		if p := *fc.ListenPort; p < 1 || p > 65535 {
			v.fail("listen_port", "want 1-65535, got %d", p)
		} else {
			c.ListenPort = uint16(p)
		}
	}
	if fc.MTU != 0 && (fc.MTU < 1280 || fc.MTU > 9000) {
		v.fail("mtu", "want 1280-9000, or 0 to derive it from the underlay, got %d", fc.MTU)
	}
	if fc.HTTPListen != nil {
		c.HTTPListen = *fc.HTTPListen
		if c.HTTPListen != "" {
			if _, err := netip.ParseAddrPort(c.HTTPListen); err != nil {
				v.fail("http_listen", "want IP:port (or \"\" to disable), got %q", c.HTTPListen)
			}
		}
	}

	uplinkNames := map[string]string{}
	for i, fu := range fc.Uplinks {
		base := fmt.Sprintf("uplinks[%d]", i)
		u := Uplink{Name: fu.Name, Interface: fu.Interface}
		if !nameRE.MatchString(fu.Name) {
			v.fail(base+".name", "want 1-63 lower-case letters, digits and '-', got %q", fu.Name)
		} else if prev, dup := uplinkNames[fu.Name]; dup {
			v.fail(base+".name", "%q is also the name of %s", fu.Name, prev)
		} else {
			uplinkNames[fu.Name] = base
		}
		if !ifaceRE.MatchString(fu.Interface) || fu.Interface == "." || fu.Interface == ".." {
			v.fail(base+".interface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", fu.Interface)
		}
		if fu.Addr != "" {
			a, err := netip.ParseAddr(fu.Addr)
			if err != nil || !a.Is4() {
				v.fail(base+".addr", "want an IPv4 address, got %q", fu.Addr)
			} else {
				u.Addr = a
			}
		}
		c.Uplinks = append(c.Uplinks, u)
	}

	c.ProbeInterval = DefaultProbeInterval
	if fc.ProbeInterval != "" {
		d, err := time.ParseDuration(fc.ProbeInterval)
		switch {
		case err != nil:
			v.fail("probe_interval", "want a duration such as \"200ms\", got %q", fc.ProbeInterval)
		case d < MinProbeInterval || d > MaxProbeInterval:
			v.fail("probe_interval", "want %v to %v, got %v", MinProbeInterval, MaxProbeInterval, d)
		default:
			c.ProbeInterval = d
		}
	}
	keyIDs := map[probes.KeyID]string{}
	if fc.ProbeKey != nil {
		c.ProbeKey = v.probeKey("probe_key", fc.ProbeKey, keyIDs)
	}
	if len(fc.ProbeAcceptedKeys) > 0 && fc.ProbeKey == nil {
		v.fail("probe_accepted_keys", "needs a probe_key (the key that signs)")
	}
	if n := len(fc.ProbeAcceptedKeys); n > probes.MaxAccepted {
		v.fail("probe_accepted_keys", "at most %d keys, got %d", probes.MaxAccepted, n)
	}
	for i := range fc.ProbeAcceptedKeys {
		if k := v.probeKey(fmt.Sprintf("probe_accepted_keys[%d]", i), &fc.ProbeAcceptedKeys[i], keyIDs); !k.IsZero() {
			c.ProbeAccepted = append(c.ProbeAccepted, k)
		}
	}
	if fc.SLA != nil {
		c.SLA = v.sla("sla", fc.SLA)
	}
	c.Pair = v.pairSelf(fc.Pair)

	// Every prefix the config mentions, to reject overlaps across sites.
	type owner struct {
		field string
		p     netip.Prefix
	}
	var claimed []owner
	claim := func(field string, p netip.Prefix) {
		for _, o := range claimed {
			if o.p.Overlaps(p) {
				v.fail(field, "%s overlaps %s (%s)", p, o.p, o.field)
				return
			}
		}
		claimed = append(claimed, owner{field, p})
	}
	for i, s := range fc.LANPrefixes {
		field := fmt.Sprintf("lan_prefixes[%d]", i)
		if p, ok := v.lanPrefix(field, s); ok {
			claim(field, p)
			c.LANPrefixes = append(c.LANPrefixes, p)
		}
	}

	names := map[string]string{}
	pairs := pairGroups{}
	keys := map[wgkey.PublicKey]string{}
	addrs := map[netip.Addr]string{}
	if c.OverlayAddr.IsValid() {
		addrs[c.OverlayAddr] = "overlay_addr"
	}
	for i := range fc.Peers {
		fp := &fc.Peers[i]
		base := fmt.Sprintf("peers[%d]", i)
		p := PeerConfig{Name: fp.Name, Site: fp.Site}
		if !nameRE.MatchString(fp.Name) {
			v.fail(base+".name", "want 1-63 lower-case letters, digits and '-', got %q", fp.Name)
		} else if prev, dup := names[fp.Name]; dup {
			v.fail(base+".name", "%q is also the name of %s", fp.Name, prev)
		} else {
			names[fp.Name] = base
		}
		if fp.Site != "" && !siteRE.MatchString(fp.Site) {
			v.fail(base+".site", "want a site id of 1-64 letters, digits, '_', '.' or '-', got %q", fp.Site)
		}
		if fp.PublicKey == "" {
			v.fail(base+".public_key", "required")
		} else if k, err := wgkey.ParsePublic(fp.PublicKey); err != nil {
			v.fail(base+".public_key", "%v", err)
		} else if prev, dup := keys[k]; dup {
			v.fail(base+".public_key", "same key as %s", prev)
		} else {
			keys[k] = base
			p.PublicKey = k
		}
		p.OverlayAddr = v.overlayAddr(base+".overlay_addr", fp.OverlayAddr)
		if p.OverlayAddr.IsValid() {
			if prev, dup := addrs[p.OverlayAddr]; dup {
				v.fail(base+".overlay_addr", "%s is already used by %s", p.OverlayAddr, prev)
			} else {
				addrs[p.OverlayAddr] = base + ".overlay_addr"
			}
		}
		for j, s := range fp.Endpoints {
			field := fmt.Sprintf("%s.endpoints[%d]", base, j)
			if ap, err := netmap.ParseEndpoint(s); err != nil {
				v.fail(field, "%v", err)
			} else {
				p.Endpoints = append(p.Endpoints, ap)
			}
		}
		for j, s := range fp.Prefixes {
			field := fmt.Sprintf("%s.prefixes[%d]", base, j)
			if pfx, ok := v.lanPrefix(field, s); ok {
				p.Prefixes = append(p.Prefixes, pfx)
			}
		}
		p.Pair = v.pairMember(base, fp.Pair)
		// The second member of a pair announces what the first claimed.
		if !v.samePairPrefixes(pairs, base, &p) {
			for j, pfx := range p.Prefixes {
				claim(fmt.Sprintf("%s.prefixes[%d]", base, j), pfx)
			}
		}
		if fp.Keepalive != "" {
			d, err := time.ParseDuration(fp.Keepalive)
			switch {
			case err != nil:
				v.fail(base+".keepalive", "want a duration such as \"25s\", got %q", fp.Keepalive)
			case d < 0 || d > 65535*time.Second || d%time.Second != 0:
				v.fail(base+".keepalive", "want whole seconds from 0s to 65535s, got %s", d)
			default:
				p.Keepalive = d
			}
		}
		if fp.SLA != nil {
			sla := v.sla(base+".sla", fp.SLA)
			p.SLA = &sla
		}
		c.Peers = append(c.Peers, p)
	}
	if fc.Gateway != nil {
		c.Gateway = v.gateway(fc.Gateway, c)
	}
	if fc.Pair != nil && fc.Pair.filePairLocal.set() {
		c.Pair.Member = v.pairLocal(&fc.Pair.filePairLocal, c)
	}
	return c
}

// probeKey validates one probe key; ids records the ids seen so far, for
// duplicates. It returns the zero Key on error.
func (v *validator) probeKey(field string, fk *fileProbeKey, ids map[probes.KeyID]string) probes.Key {
	if fk.ID == nil {
		v.fail(field+".id", "required (a number from 0 to %d, the same on every appliance)", uint32(math.MaxUint32))
		return probes.Key{}
	}
	id := probes.KeyID(*fk.ID)
	if prev, dup := ids[id]; dup {
		v.fail(field+".id", "%d is also the id of %s", id, prev)
		return probes.Key{}
	}
	ids[id] = field
	if fk.Secret == "" {
		v.fail(field+".secret", "required (32 random bytes in base64)")
		return probes.Key{}
	}
	k, err := probes.ParseKey(id, fk.Secret)
	if err != nil {
		v.fail(field+".secret", "%v", err)
		return probes.Key{}
	}
	return k
}

// sla validates an SLA object.
func (v *validator) sla(field string, fs *fileSLA) probes.SLA {
	var s probes.SLA
	if p := fs.MaxLossPercent; p < 0 || p > 100 {
		v.fail(field+".max_loss_percent", "want 0 to 100 (0: no limit), got %v", p)
	} else {
		s.MaxLossPercent = p
	}
	delay := func(name, in string) time.Duration {
		if in == "" {
			return 0
		}
		d, err := time.ParseDuration(in)
		switch {
		case err != nil:
			v.fail(field+"."+name, "want a duration such as \"150ms\", got %q", in)
		case d < 0 || d > MaxSLADelay:
			v.fail(field+"."+name, "want 0 to %v (0: no limit), got %v", MaxSLADelay, d)
		default:
			return d
		}
		return 0
	}
	s.MaxRTT = delay("max_rtt", fs.MaxRTT)
	s.MaxJitter = delay("max_jitter", fs.MaxJitter)
	return s
}

func (v *validator) overlayAddr(field, s string) netip.Addr {
	if s == "" {
		v.fail(field, "required (an address in %s)", OverlayRange)
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		v.fail(field, "want an IP address, got %q", s)
		return netip.Addr{}
	}
	if !OverlayRange.Contains(a) {
		v.fail(field, "%s is outside the overlay range %s", a, OverlayRange)
		return netip.Addr{}
	}
	return a
}

func (v *validator) lanPrefix(field, s string) (netip.Prefix, bool) {
	p, err := netmap.ParseLANPrefix(s)
	if err != nil {
		v.fail(field, "%v", err)
		return netip.Prefix{}, false
	}
	return p, true
}

// MarshalJSON writes the config in the file format that ParseConfig reads.
func (c *Config) MarshalJSON() ([]byte, error) {
	fc := fileConfig{
		Name:        c.Name,
		StateDir:    c.StateDir,
		Interface:   c.Interface,
		OverlayAddr: c.OverlayAddr.String(),
		MTU:         c.MTU,
		HTTPListen:  &c.HTTPListen,
	}
	port := int(c.ListenPort)
	fc.ListenPort = &port
	for _, u := range c.Uplinks {
		fu := fileUplink{Name: u.Name, Interface: u.Interface}
		if u.Addr.IsValid() {
			fu.Addr = u.Addr.String()
		}
		fc.Uplinks = append(fc.Uplinks, fu)
	}
	if !c.ProbeKey.IsZero() {
		fc.ProbeKey = marshalProbeKey(c.ProbeKey)
	}
	for _, k := range c.ProbeAccepted {
		fc.ProbeAcceptedKeys = append(fc.ProbeAcceptedKeys, *marshalProbeKey(k))
	}
	if c.ProbeInterval != 0 {
		fc.ProbeInterval = c.ProbeInterval.String()
	}
	if c.SLA != (probes.SLA{}) {
		fc.SLA = marshalSLA(c.SLA)
	}
	if c.Pair != nil {
		fc.Pair = &filePairSelf{Priority: c.Pair.Priority, Drained: c.Pair.Drained, Site: c.Pair.Site,
			filePairLocal: marshalPairLocal(c.Pair.Member)}
	}
	fc.Gateway = marshalGateway(c.Gateway)
	for _, p := range c.LANPrefixes {
		fc.LANPrefixes = append(fc.LANPrefixes, p.String())
	}
	for _, p := range c.Peers {
		fp := filePeer{Name: p.Name, Site: p.Site, PublicKey: p.PublicKey.String(), OverlayAddr: p.OverlayAddr.String()}
		for _, e := range p.Endpoints {
			fp.Endpoints = append(fp.Endpoints, e.String())
		}
		for _, x := range p.Prefixes {
			fp.Prefixes = append(fp.Prefixes, x.String())
		}
		if p.Keepalive > 0 {
			fp.Keepalive = p.Keepalive.String()
		}
		if p.SLA != nil {
			fp.SLA = marshalSLA(*p.SLA)
		}
		if m := p.Pair; m != nil {
			fp.Pair = &filePairMember{Site: m.Site, Priority: m.Priority, Active: m.Active, Term: m.Term}
		}
		fc.Peers = append(fc.Peers, fp)
	}
	return json.MarshalIndent(fc, "", "  ")
}

func marshalProbeKey(k probes.Key) *fileProbeKey {
	id := uint32(k.ID())
	raw := k.Raw()
	return &fileProbeKey{ID: &id, Secret: base64.StdEncoding.EncodeToString(raw[:])}
}

func marshalSLA(s probes.SLA) *fileSLA {
	fs := &fileSLA{MaxLossPercent: s.MaxLossPercent}
	if s.MaxRTT != 0 {
		fs.MaxRTT = s.MaxRTT.String()
	}
	if s.MaxJitter != 0 {
		fs.MaxJitter = s.MaxJitter.String()
	}
	return fs
}
