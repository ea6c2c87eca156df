package appliance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/internal/atomicfile"
	"github.com/causeway-net/causeway/probes"
)

// NetmapFile is where a controller-managed appliance keeps the last netmap
// it applied, inside its state directory. It is what lets the overlay come
// back with the controller unreachable (fail-static).
const NetmapFile = "netmap.json"

// Local holds the settings a controller-managed appliance decides for
// itself; everything else comes from the netmap.
type Local struct {
	StateDir   string
	Interface  string // "" means DefaultInterface
	ListenPort uint16 // 0 means DefaultListenPort
	MTU        int    // 0 means AutoMTU
	HTTPListen string
	Uplinks    []Uplink       // empty: kernel-routed sockets
	Gateway    *GatewayConfig // nil: not the LAN's Internet gateway
	// Pair, if set, makes the appliance a member of its site's pair
	// (pairmember.go); PairPriority is its priority until the controller's
	// netmap carries one (once the site has both members).
	Pair         *PairLocal
	PairPriority int
}

// ConfigFromNetmap builds the appliance config for nm. The result passes
// the same validation as a config file, so a netmap that would not make a
// valid file is refused with the same field-naming errors.
func ConfigFromNetmap(l Local, nm *netmap.Netmap) (*Config, error) {
	c := &Config{
		Name: nm.Name, StateDir: l.StateDir, Interface: l.Interface, OverlayAddr: nm.OverlayAddr,
		ListenPort: l.ListenPort, MTU: l.MTU, LANPrefixes: nm.LANPrefixes, HTTPListen: l.HTTPListen,
		Uplinks: l.Uplinks, Gateway: l.Gateway,
	}
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	// Path probing: the tenant's keys (signing key first) and interval;
	// each peer carries the SLA the controller resolved for the site pair.
	if !nm.Probes.IsZero() {
		c.ProbeKey = nm.Probes.Keys[0]
		c.ProbeAccepted = nm.Probes.Keys[1:]
		c.ProbeInterval = nm.Probes.Interval
	}
	if nm.Pair != nil {
		c.Pair = &PairSelf{Priority: nm.Pair.Priority, Drained: nm.Pair.Drained, Site: nm.Site}
	}
	if l.Pair != nil {
		if c.Pair == nil {
			c.Pair = &PairSelf{Priority: l.PairPriority, Site: nm.Site}
		}
		m := *l.Pair
		c.Pair.Member = &m
	}
	for _, p := range nm.Peers {
		pc := PeerConfig{
			Name: p.Name, Site: p.Site, PublicKey: p.PublicKey, OverlayAddr: p.OverlayAddr,
			Endpoints: p.Endpoints, Prefixes: p.Prefixes, Keepalive: p.Keepalive,
		}
		if p.Pair != nil {
			pc.Pair = &PairMember{Site: p.Site, Priority: p.Pair.Priority, Active: p.Pair.Active, Term: p.Pair.Term}
		}
		if p.Pair != nil && p.Site == nm.Site {
			// The partner of a pair announces this site's own LAN, which
			// is on the LAN, not behind the tunnel.
			pc.Prefixes = nil
		}
		if p.SLA != (probes.SLA{}) {
			sla := p.SLA
			pc.SLA = &sla
		}
		c.Peers = append(c.Peers, pc)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("netmap version %d: %w", nm.Version, err)
	}
	return cfg, nil
}

// SaveNetmap writes nm to the state directory atomically: a crash leaves
// either the old or the new file, never a torn one.
func SaveNetmap(stateDir string, nm *netmap.Netmap) error {
	b, err := json.Marshal(nm)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, NetmapFile), b, 0o600)
}

// LoadNetmap reads the last applied netmap; it returns (nil, nil) if there
// is none yet.
func LoadNetmap(stateDir string) (*netmap.Netmap, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, NetmapFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	nm, err := netmap.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("saved netmap %s: %w", filepath.Join(stateDir, NetmapFile), err)
	}
	return nm, nil
}
