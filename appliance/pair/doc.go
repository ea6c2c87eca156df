// Package pair runs one member of a PAIR: two appliances on one LAN, each
// with its own uplink and WireGuard identity, of which one at a time (the
// active) holds the LAN's gateway address, the VIP.
//
// Each member sends an authenticated heartbeat (HMAC-SHA256 truncated to 128
// bits, with name, priority, term, role, drain state and a sequence number)
// every Interval on two channels: the LAN, and across the WAN between the two
// uplinks. The partner is dead only when both channels have been silent for
// DeadAfter, so a fault of the LAN alone never makes a second active.
// Memberlist (hashicorp/memberlist, tuned for two nodes) runs beside it on
// the LAN for discovery, node metadata and graceful leaves; it does not
// decide liveness.
//
// The election: the active is the best live member (not drained before
// drained, LAN up before LAN down, then the higher priority, then the lower
// name); a live active keeps the role unless it is drained, loses its LAN
// carrier, or, with Preempt, a member of strictly higher priority has been
// eligible and in contact for HoldDown. Every takeover starts a higher term;
// when both are active (a partition healed) the higher term keeps the role.
// Planned hand-overs are make before break: the new active adds the VIP and
// announces it with gratuitous ARP before the old one removes it.
//
// The active adds the VIP to the LAN interface with a valid lifetime it
// keeps renewing, so a member that dies or hangs loses the address on its
// own a few seconds later; a standby and a starting member remove it.
//
//	m, err := pair.Start(ctx, pair.Config{
//		Name: "office-1-a", Priority: 200, Preempt: true,
//		LANInterface: "eth0", LANAddr: lanA, PartnerLANAddr: lanB,
//		WANInterface: "eth1", WANAddr: wanA, PartnerWANAddr: wanB,
//		VIP: netip.MustParsePrefix("10.10.0.1/24"), Key: secret,
//		OnChange: func(s pair.State) { ... },
//	})
//	m.State(); m.Metrics(); m.Drain(true); m.SetPriority(50); m.Close()
//
// docs/pair.md in the repository has the design, the failure cases and the
// measured takeover times.
package pair
