package gateway

import (
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidation(t *testing.T) {
	good := func() Config {
		return Config{
			LANInterface: "lan0", LANPrefixes: []netip.Prefix{netip.MustParsePrefix("10.10.0.0/24")},
			LANAddr: netip.MustParseAddr("10.10.0.1"), Partner: netip.MustParseAddr("10.10.0.2"), Overlay: "cw0",
			Uplinks: []Uplink{
				{Name: "wan1", Interface: "wan1", Gateway: netip.MustParseAddr("198.18.1.1")},
				{Name: "b", Borrowed: true, SocketPort: 51820},
			},
			Lend: &Lend{Interface: "wan1", Gateway: netip.MustParseAddr("198.18.1.1"),
				PublicAddr: netip.MustParseAddr("198.18.1.2"), PublicPort: 51821},
		}
	}
	c, err := good().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Table != DefaultTable || c.RulePriority != DefaultRulePriority || c.Lend.PartnerPort != DefaultPartnerPort ||
		c.Uplinks[1].Interface != "lan0" || c.Uplinks[1].Gateway != c.Partner || c.Uplinks[0].Weight != 1 {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.uplinkTable(1) != DefaultTable+2 || c.lendTable() != DefaultTable+3 || uplinkMark(1) != 0x20000 {
		t.Errorf("layout: uplink tables %d, lend table %d, mark %#x", c.uplinkTable(1), c.lendTable(), uplinkMark(1))
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no lan", func(c *Config) { c.LANInterface = "" }, "LANInterface"},
		{"no prefixes", func(c *Config) { c.LANPrefixes = nil }, "LANPrefixes"},
		{"ipv6 prefix", func(c *Config) { c.LANPrefixes = append(c.LANPrefixes, netip.MustParsePrefix("fd00::/64")) }, "LANPrefixes[1]"},
		{"overlap", func(c *Config) { c.LANPrefixes = append(c.LANPrefixes, netip.MustParsePrefix("10.10.0.128/25")) }, "LANPrefixes[1]"},
		{"lan addr outside", func(c *Config) { c.LANAddr = netip.MustParseAddr("10.99.0.1") }, "LANAddr"},
		{"partner is us", func(c *Config) { c.Partner = c.LANAddr }, "Partner"},
		{"no uplinks", func(c *Config) { c.Uplinks = nil }, "Uplinks"},
		{"dup name", func(c *Config) { c.Uplinks[1].Name = "wan1" }, "Uplinks[1].Name"},
		{"no gateway", func(c *Config) { c.Uplinks[0].Gateway = netip.Addr{} }, "Uplinks[0].Gateway"},
		{"uplink on lan", func(c *Config) { c.Uplinks[0].Interface = "lan0" }, "Uplinks[0].Interface"},
		{"socket on own", func(c *Config) { c.Uplinks[0].SocketPort = 1 }, "Uplinks[0].SocketPort"},
		{"weight", func(c *Config) { c.Uplinks[0].Weight = 300 }, "Uplinks[0].Weight"},
		{"borrowed elsewhere", func(c *Config) { c.Uplinks[1].Interface = "wan2" }, "Uplinks[1].Interface"},
		{"borrowed no lan addr", func(c *Config) { c.LANAddr = netip.Addr{} }, "LANAddr"},
		{"lend no port", func(c *Config) { c.Lend.PublicPort = 0 }, "Lend.PublicPort"},
		{"lend no partner", func(c *Config) { c.Partner = netip.Addr{}; c.Uplinks = c.Uplinks[:1] }, "Partner"},
		{"reserved table", func(c *Config) { c.Table = 250 }, "Table"},
		{"priority", func(c *Config) { c.RulePriority = 32760 }, "RulePriority"},
	} {
		cfg := good()
		tc.edit(&cfg)
		_, err := cfg.withDefaults()
		if err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
}
