package pair

import (
	"fmt"
	"time"
)

// Role is a member's role.
type Role uint8

// The roles. A member starts as a standby; Stopped is announced by a member
// that is closing, and is the role of a closed Member. The zero Role is a
// partner not heard yet ("none").
const (
	RoleStandby Role = 1
	RoleActive  Role = 2
	RoleStopped Role = 3
)

var roleNames = [...]string{"none", "standby", "active", "stopped"}

func (r Role) String() string { return enumName(roleNames[:], uint8(r), "role") }

// MarshalText makes a Role a string in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (r *Role) UnmarshalText(b []byte) error { return enumParse(roleNames[:], b, "role", (*uint8)(r)) }

// enumName and enumParse turn the small enums into their names and back.
func enumName(names []string, v uint8, kind string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

func enumParse(names []string, b []byte, kind string, v *uint8) error {
	for i, name := range names {
		if name == string(b) {
			*v = uint8(i)
			return nil
		}
	}
	return fmt.Errorf("pair: unknown %s %q", kind, b)
}

// Channel is a heartbeat channel.
type Channel uint8

// The two channels: the LAN between the members and the path across the WAN
// between their uplinks.
const (
	ChannelLAN Channel = 1
	ChannelWAN Channel = 2
)

var channelNames = [...]string{"none", "lan", "wan"}

func (c Channel) String() string { return enumName(channelNames[:], uint8(c), "channel") }

// Reason says why the active role moved. A member that takes the role
// records the reason it took it for; one that gives it up records why.
type Reason uint8

// The reasons. Startup, PartnerDead, PartnerDrained, PartnerLANDown,
// PartnerLeft and Preempt are reasons to take the role; Drain, LANDown,
// Split (the partner holds a higher term after a partition healed) and Stop
// are reasons to give it up. A member that gives way to a preempting
// partner records Preempt too.
const (
	ReasonNone           Reason = 0
	ReasonStartup        Reason = 1  // no active member when this one started
	ReasonPartnerDead    Reason = 2  // no heartbeat on either channel for DeadAfter
	ReasonPartnerDrained Reason = 3  // the active partner was drained
	ReasonPartnerLANDown Reason = 4  // the active partner lost its LAN link and gave up the role
	ReasonPartnerLeft    Reason = 5  // the active partner stopped (Close)
	ReasonPreempt        Reason = 6  // a member of higher priority returned and took the role back
	ReasonDrain          Reason = 7  // this member was drained and handed over
	ReasonLANDown        Reason = 8  // this member's LAN link went down
	ReasonSplit          Reason = 9  // both were active; the higher term keeps the role
	ReasonStop           Reason = 10 // this member stopped (Close) while it held the role
	numReasons                  = 11
)

var reasonNames = [numReasons]string{"none", "startup", "partner dead", "partner drained", "partner LAN down",
	"partner left", "higher priority returned", "drain", "LAN down", "split resolved", "stop"}

func (r Reason) valid() bool { return r < numReasons }

func (r Reason) String() string { return enumName(reasonNames[:], uint8(r), "reason") }

// MarshalText makes a Reason a string in JSON.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (r *Reason) UnmarshalText(b []byte) error {
	return enumParse(reasonNames[:], b, "reason", (*uint8)(r))
}

// Reasons lists every reason but ReasonNone, for metrics that want a series
// per reason from the start.
func Reasons() []Reason {
	rs := make([]Reason, 0, numReasons-1)
	for r := ReasonStartup; r < numReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}

// Failover is one move of the active role as this member saw it.
type Failover struct {
	At     time.Time
	From   string // the member that held the role, "" if none
	To     string // the member that holds it now, "" if none
	Reason Reason
}

// State is a member's view of the pair.
type State struct {
	Name string
	Role Role
	// Active is the member that holds the VIP as far as this one knows:
	// itself, the partner, or "" when neither.
	Active string
	// Since is when Role last changed.
	Since time.Time
	// Term is the term of the current (or last) active. Every takeover
	// starts a higher one.
	Term     uint64
	Priority int
	Drained  bool
	// LANDown: this member's LAN interface has no carrier.
	LANDown bool
	Partner PartnerState
	// LastFailover is the last move of the active role this member saw,
	// nil before the first.
	LastFailover *Failover
}

// PartnerState is what a member knows of the other one.
type PartnerState struct {
	// Name is empty until a first heartbeat arrived.
	Name string
	// Alive: a heartbeat arrived within DeadAfter on LAN, on WAN, or both.
	Alive, LAN, WAN bool
	// Role, Term, Priority, Drained and LANDown are from its last heartbeat.
	Role     Role
	Term     uint64
	Priority int
	Drained  bool
	LANDown  bool
	// LastSeen is when its last heartbeat arrived.
	LastSeen time.Time
	// Member: memberlist counts it as an alive member.
	Member bool
}

// Metrics is a snapshot of a member's counters. Counters only grow.
type Metrics struct {
	// Failovers counts the moves of the active role this member made
	// (takeovers and hand-overs), by reason.
	Failovers map[Reason]uint64
	LAN, WAN  ChannelMetrics
	// GARPSent counts gratuitous ARP frames sent.
	GARPSent uint64
	// VIPErrors counts failed attempts to add, refresh or remove the VIP.
	VIPErrors uint64
}

// ChannelMetrics are the heartbeat counters of one channel.
type ChannelMetrics struct {
	Sent       uint64 // heartbeats sent
	SendErrors uint64 // sends the kernel refused
	Received   uint64 // accepted heartbeats
	// Bad counts datagrams that are not a well-formed heartbeat with a
	// valid MAC: dropped before anything in them is believed.
	Bad uint64
	// Rejected counts authentic heartbeats dropped anyway: a replayed or
	// old sequence number, this member's own name, a wrong source address
	// or channel, or a third member's name.
	Rejected uint64
}
