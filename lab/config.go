package lab

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

const (
	configFileName = "config.json"
	applianceLog   = "appliance.log"
	// natKeepalive is how often an appliance behind NAT refreshes its
	// mapping; home routers forget idle UDP mappings after 30 s or more.
	natKeepalive = 10 * time.Second
)

// applianceConfigs builds every appliance's config, creating the private
// keys in their state directories (dir/<name>/private.key) on first use.
// Each appliance lists every other one as a peer. An appliance behind NAT
// is listed without endpoints (its peers learn where it is when it
// connects) and itself lists its peers with a keepalive.
//
// The overlay MTU is left for the appliance to derive (mtu 0).
func applianceConfigs(t *topology, dir string) (map[string]*appliance.Config, error) {
	keys := map[string]wgkey.PublicKey{}
	for _, a := range t.appliances {
		k, err := appliance.LoadOrCreateKey(filepath.Join(dir, a.name))
		if err != nil {
			return nil, fmt.Errorf("key for %s: %w", a.name, err)
		}
		keys[a.name] = k.Public()
	}
	out := map[string]*appliance.Config{}
	for _, a := range t.appliances {
		cfg := &appliance.Config{
			Name:        a.name,
			StateDir:    filepath.Join(dir, a.name),
			Interface:   appliance.DefaultInterface,
			OverlayAddr: a.overlay,
			ListenPort:  listenPort,
			LANPrefixes: a.lan,
			HTTPListen:  appliance.DefaultHTTPListen,
			Uplinks:     []appliance.Uplink{{Name: a.wan, Interface: a.wan}},
		}
		for _, o := range t.appliances {
			if o.name == a.name {
				continue
			}
			p := appliance.PeerConfig{
				Name:        o.name,
				PublicKey:   keys[o.name],
				OverlayAddr: o.overlay,
				Prefixes:    o.lan,
			}
			if !o.natted {
				wan := t.iface(o.name, o.wan)
				p.Endpoints = []netip.AddrPort{netip.AddrPortFrom(wan.addr.Addr(), listenPort)}
			}
			if a.natted {
				p.Keepalive = natKeepalive
			}
			cfg.Peers = append(cfg.Peers, p)
		}
		out[a.name] = cfg
	}
	return out, nil
}

// writeApplianceConfig writes cfg to its state directory in the file
// format, checking that the appliance will accept it.
func writeApplianceConfig(cfg *appliance.Config) (string, error) {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if _, err := appliance.ParseConfig(b); err != nil {
		return "", fmt.Errorf("lab: generated an invalid config for %s: %w", cfg.Name, err)
	}
	path := filepath.Join(cfg.StateDir, configFileName)
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	return path, nil
}
