package pair

import (
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"time"
)

// Defaults for the fields a Config leaves zero.
const (
	DefaultInterval       = 50 * time.Millisecond
	DefaultDeadIntervals  = 5 // DeadAfter = 5 * Interval
	DefaultHoldDown       = time.Second
	DefaultHeartbeatPort  = 51830
	DefaultMemberlistPort = 7946
	// MinInterval and MaxInterval bound Config.Interval.
	MinInterval = 10 * time.Millisecond
	MaxInterval = 5 * time.Second
	// MinKeyLen is the shortest heartbeat key accepted.
	MinKeyLen = 16
	// MaxAcceptedKeys bounds Config.AcceptedKeys.
	MaxAcceptedKeys = 2
	// MaxNameLen bounds a member name (it travels in every heartbeat).
	MaxNameLen = 63
	// MaxPriority bounds Config.Priority (it travels as 16 bits).
	MaxPriority = 65535
)

// Config describes this member of a PAIR. Both members use the same Key,
// Interval, DeadAfter, ports, VIP and Preempt policy, and each other's
// addresses.
type Config struct {
	// Name of this member, unique in the pair: 1-63 lower-case letters,
	// digits and '-'. Ties in priority go to the lower name.
	Name string
	// Priority: the higher wins the active role (0-65535).
	Priority int
	// Preempt lets a member of strictly higher priority take the role back
	// from a live active once it has been eligible and in contact with the
	// partner for HoldDown. Without it the active keeps the role until it
	// fails or is drained.
	Preempt bool
	// HoldDown is how long a returning member must be eligible and in
	// contact with the partner before it preempts (default 1 s).
	HoldDown time.Duration

	// LANInterface carries the VIP, the LAN heartbeat and memberlist.
	LANInterface string
	// LANAddr is this member's own address on LANInterface (not the VIP);
	// PartnerLANAddr is the partner's.
	LANAddr, PartnerLANAddr netip.Addr
	// HeartbeatPort is the UDP port of the LAN heartbeat on both members
	// (default 51830).
	HeartbeatPort uint16
	// MemberlistPort is memberlist's UDP and TCP port on LANAddr on both
	// members (default 7946).
	MemberlistPort uint16

	// WANInterface is the uplink the WAN heartbeat socket is pinned to
	// (SO_BINDTODEVICE); WANAddr is the local address and port of that
	// socket and PartnerWANAddr the partner's. The WAN heartbeat is what
	// keeps a LAN-only fault from making a second active.
	WANInterface            string
	WANAddr, PartnerWANAddr netip.AddrPort

	// VIP is the gateway address with the LAN prefix length, e.g.
	// 10.10.0.1/24. Only the active holds it.
	VIP netip.Prefix

	// Key authenticates the heartbeats (HMAC-SHA256, truncated to 128
	// bits) and encrypts memberlist's gossip; at least 16 bytes, the same
	// on both members.
	Key []byte
	// AcceptedKeys are further keys whose heartbeats and gossip are
	// accepted (but never sent with), at most MaxAcceptedKeys: during a
	// key rotation one member may already sign with the next key while
	// the other still signs with the previous one. Member.SetKeys changes
	// both while running.
	AcceptedKeys [][]byte

	// Interval between two heartbeats on each channel (default 50 ms).
	Interval time.Duration
	// DeadAfter: the partner is dead when no heartbeat arrived on either
	// channel for this long (default 5 * Interval). It is also how long a
	// starting member listens before it takes the role alone.
	DeadAfter time.Duration

	// OnChange is called after every change of role, of the active member
	// or of the term, in order, from a goroutine of its own (never with a
	// lock of the member held, and never on the heartbeat path: a slow
	// OnChange delays later calls, not heartbeats).
	OnChange func(State) `json:"-"`
	// Log receives the member's logs; nil discards them.
	Log *slog.Logger `json:"-"`
}

// ConfigError is a problem with one field of a Config.
type ConfigError struct {
	Field string // the Config field, e.g. "VIP"
	Msg   string
}

func (e *ConfigError) Error() string { return "pair: config: " + e.Field + ": " + e.Msg }

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

func validName(s string) bool { return len(s) <= MaxNameLen && nameRE.MatchString(s) }

func validIface(s string) bool { return ifaceRE.MatchString(s) && s != "." && s != ".." }

// withDefaults returns c with defaults applied, or the first problem.
func (c Config) withDefaults() (Config, error) {
	bad := func(field, format string, args ...any) (Config, error) {
		return c, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadIntervals * c.Interval
	}
	if c.HoldDown == 0 {
		c.HoldDown = DefaultHoldDown
	}
	if c.HeartbeatPort == 0 {
		c.HeartbeatPort = DefaultHeartbeatPort
	}
	if c.MemberlistPort == 0 {
		c.MemberlistPort = DefaultMemberlistPort
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case !validName(c.Name):
		return bad("Name", "want 1-63 lower-case letters, digits and '-', got %q", c.Name)
	case c.Priority < 0 || c.Priority > MaxPriority:
		return bad("Priority", "want 0-%d, got %d", MaxPriority, c.Priority)
	case c.HoldDown < 0:
		return bad("HoldDown", "want a positive duration, got %v", c.HoldDown)
	case !validIface(c.LANInterface):
		return bad("LANInterface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", c.LANInterface)
	case !c.LANAddr.Is4():
		return bad("LANAddr", "want an IPv4 address, got %v", c.LANAddr)
	case !c.PartnerLANAddr.Is4():
		return bad("PartnerLANAddr", "want an IPv4 address, got %v", c.PartnerLANAddr)
	case c.PartnerLANAddr == c.LANAddr:
		return bad("PartnerLANAddr", "is LANAddr (%v)", c.LANAddr)
	case !validIface(c.WANInterface):
		return bad("WANInterface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", c.WANInterface)
	case c.WANInterface == c.LANInterface:
		return bad("WANInterface", "is LANInterface (%q): the WAN heartbeat must not depend on the LAN", c.LANInterface)
	case !c.WANAddr.Addr().Is4() || c.WANAddr.Port() == 0:
		return bad("WANAddr", "want IPv4:port, got %v", c.WANAddr)
	case !c.PartnerWANAddr.Addr().Is4() || c.PartnerWANAddr.Port() == 0:
		return bad("PartnerWANAddr", "want IPv4:port, got %v", c.PartnerWANAddr)
	case c.PartnerWANAddr.Addr() == c.WANAddr.Addr():
		return bad("PartnerWANAddr", "is this member's WANAddr (%v)", c.WANAddr)
	case !c.VIP.IsValid() || !c.VIP.Addr().Is4() || c.VIP.Bits() < 8 || c.VIP.Bits() > 32:
		return bad("VIP", "want an IPv4 address with the LAN prefix length, e.g. 10.10.0.1/24, got %v", c.VIP)
	case c.VIP.Addr() == c.LANAddr || c.VIP.Addr() == c.PartnerLANAddr:
		return bad("VIP", "%v is a member's own LAN address", c.VIP.Addr())
	case !c.VIP.Contains(c.LANAddr):
		return bad("LANAddr", "%v is outside the VIP's prefix %v", c.LANAddr, c.VIP.Masked())
	case !c.VIP.Contains(c.PartnerLANAddr):
		return bad("PartnerLANAddr", "%v is outside the VIP's prefix %v", c.PartnerLANAddr, c.VIP.Masked())
	case c.Interval < MinInterval || c.Interval > MaxInterval:
		return bad("Interval", "want %v to %v, got %v", MinInterval, MaxInterval, c.Interval)
	case c.DeadAfter < 3*c.Interval:
		return bad("DeadAfter", "want at least 3 intervals (%v), got %v", 3*c.Interval, c.DeadAfter)
	case c.HeartbeatPort == c.MemberlistPort:
		return bad("HeartbeatPort", "is MemberlistPort (%d)", c.MemberlistPort)
	}
	if err := checkKeys(c.Key, c.AcceptedKeys); err != nil {
		return c, err
	}
	return c, nil
}

// checkKeys validates a signing key and the accepted ones.
func checkKeys(key []byte, accepted [][]byte) error {
	check := func(field string, k []byte) error {
		if len(k) < MinKeyLen {
			return &ConfigError{Field: field, Msg: fmt.Sprintf("want at least %d bytes, got %d", MinKeyLen, len(k))}
		}
		for _, b := range k {
			if b != 0 {
				return nil
			}
		}
		return &ConfigError{Field: field, Msg: "all zero"}
	}
	if err := check("Key", key); err != nil {
		return err
	}
	if len(accepted) > MaxAcceptedKeys {
		return &ConfigError{Field: "AcceptedKeys", Msg: fmt.Sprintf("at most %d keys, got %d", MaxAcceptedKeys, len(accepted))}
	}
	for i, k := range accepted {
		if err := check(fmt.Sprintf("AcceptedKeys[%d]", i), k); err != nil {
			return err
		}
	}
	return nil
}
