package pair

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		Name: "office-1-a", Priority: 200, LANInterface: "lan",
		LANAddr: netip.MustParseAddr("10.10.0.2"), PartnerLANAddr: netip.MustParseAddr("10.10.0.3"),
		WANInterface: "wan", WANAddr: netip.MustParseAddrPort("198.18.1.2:51830"),
		PartnerWANAddr: netip.MustParseAddrPort("198.18.2.2:51830"),
		VIP:            netip.MustParsePrefix("10.10.0.1/24"), Key: []byte("0123456789abcdef"),
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := validConfig().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Interval != 50*time.Millisecond || c.DeadAfter != 250*time.Millisecond || c.HoldDown != time.Second ||
		c.HeartbeatPort != DefaultHeartbeatPort || c.MemberlistPort != DefaultMemberlistPort || c.Log == nil {
		t.Fatalf("defaults: %+v", c)
	}
	if l := leaseFor(c.DeadAfter); l != 3*time.Second {
		t.Fatalf("lease %v", l)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		field string
		mod   func(*Config)
	}{
		{"Name", func(c *Config) { c.Name = "Office A" }},
		{"Name", func(c *Config) { c.Name = "" }},
		{"Priority", func(c *Config) { c.Priority = 70000 }},
		{"Priority", func(c *Config) { c.Priority = -1 }},
		{"HoldDown", func(c *Config) { c.HoldDown = -time.Second }},
		{"LANInterface", func(c *Config) { c.LANInterface = "" }},
		{"LANAddr", func(c *Config) { c.LANAddr = netip.Addr{} }},
		{"LANAddr", func(c *Config) { c.LANAddr = netip.MustParseAddr("10.11.0.2") }},
		{"PartnerLANAddr", func(c *Config) { c.PartnerLANAddr = c.LANAddr }},
		{"PartnerLANAddr", func(c *Config) { c.PartnerLANAddr = netip.MustParseAddr("fd00::3") }},
		{"WANInterface", func(c *Config) { c.WANInterface = "lan" }},
		{"WANAddr", func(c *Config) { c.WANAddr = netip.MustParseAddrPort("198.18.1.2:0") }},
		{"PartnerWANAddr", func(c *Config) { c.PartnerWANAddr = netip.AddrPort{} }},
		{"PartnerWANAddr", func(c *Config) { c.PartnerWANAddr = netip.MustParseAddrPort("198.18.1.2:9") }},
		{"VIP", func(c *Config) { c.VIP = netip.Prefix{} }},
		{"VIP", func(c *Config) { c.VIP = netip.MustParsePrefix("10.10.0.2/24") }},
		{"VIP", func(c *Config) { c.VIP = netip.MustParsePrefix("fd00::1/64") }},
		{"Key", func(c *Config) { c.Key = []byte("short") }},
		{"Key", func(c *Config) { c.Key = make([]byte, 32) }},
		{"AcceptedKeys[1]", func(c *Config) { c.AcceptedKeys = [][]byte{[]byte("0123456789abcdef"), []byte("short")} }},
		{"AcceptedKeys", func(c *Config) { c.AcceptedKeys = make([][]byte, 3) }},
		{"Interval", func(c *Config) { c.Interval = time.Millisecond }},
		{"DeadAfter", func(c *Config) { c.DeadAfter = 100 * time.Millisecond }},
		{"HeartbeatPort", func(c *Config) { c.HeartbeatPort = 7946 }},
	}
	for _, tc := range cases {
		c := validConfig()
		tc.mod(&c)
		_, err := c.withDefaults()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("want an error naming %s, got %v", tc.field, err)
		}
	}
}

func TestTextRoundTrip(t *testing.T) {
	for _, r := range append(Reasons(), ReasonNone) {
		b, _ := r.MarshalText()
		var got Reason
		if err := got.UnmarshalText(b); err != nil || got != r {
			t.Errorf("reason %v: %q -> %v, %v", r, b, got, err)
		}
	}
	for _, r := range []Role{0, RoleStandby, RoleActive, RoleStopped} {
		b, _ := r.MarshalText()
		var got Role
		if err := got.UnmarshalText(b); err != nil || got != r {
			t.Errorf("role %v: %q -> %v, %v", r, b, got, err)
		}
	}
	var r Role
	if r.UnmarshalText([]byte("boss")) == nil {
		t.Error("unknown role accepted")
	}
}
