package gateway

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The gateway's nftables objects, all in the table TableName (family ip).
const (
	// CounterTx and CounterRx are the counter objects behind Counters.
	CounterTx = "lan-to-internet"
	CounterRx = "internet-to-lan"
	lanSet    = "lan"
)

// ruleset builds the gateway's table in one batch (docs/gateway.md lists
// it in nft syntax):
//
//	set lan            the LAN prefixes (interval set)
//	counter lan-to-internet, internet-to-lan
//	chain mark-restore  filter prerouting -150: a pinned flow's packets from the LAN (not its replies) carry its uplink's mark
//	chain port-forward  nat prerouting -100 (lender only): public port -> partner's WireGuard socket
//	chain forward       filter forward 0: pin new flows to the uplink they leave on; count
//	chain nat-out       nat postrouting 100: lender SNAT, masquerade per WAN link, SNAT to LANAddr on a borrowed uplink
//	chain no-redirects  filter output 0 (with a borrowed uplink): no ICMP redirects onto the LAN
//	chain overlay-copy  filter forward -10 (with Partner and Overlay): see SetOverlayCopy
type ruleset struct {
	c   *Config
	nft *nftables.Conn
	t   *nftables.Table
	lan *nftables.Set
}

func (r *ruleset) build() error {
	c := r.c
	r.t = r.nft.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName})
	r.lan = &nftables.Set{Table: r.t, Name: lanSet, KeyType: nftables.TypeIPAddr, Interval: true}
	var elems []nftables.SetElement
	for _, p := range c.LANPrefixes {
		elems = append(elems, nftables.SetElement{Key: p.Addr().AsSlice()})
		if end, ok := prefixEnd(p); ok {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	if err := r.nft.AddSet(r.lan, elems); err != nil {
		return fmt.Errorf("the LAN set: %w", err)
	}
	for _, name := range []string{CounterTx, CounterRx} {
		r.nft.AddObj(&nftables.NamedObj{Table: r.t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	}

	restore := r.chain("mark-restore", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle)
	fwd := r.chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	for i, u := range c.Uplinks {
		m := uplinkMark(i)
		// iifname LAN ct direction original ct mark & M == m meta mark set meta mark & ~M | m
		// (not the replies: on a borrowed uplink they arrive on the LAN too)
		r.rule(restore, iif(c.LANInterface, true),
			[]expr.Any{
				&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(MarkMask), Xor: native(0)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native(m)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(^MarkMask), Xor: native(m)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			})
		// ct state new iifname LAN oifname IF rt ip nexthop GW ip daddr != @lan
		// [ip saddr != partner] ct mark set ct mark & ~M | m
		pin := [][]expr.Any{ctStateNew(), iif(c.LANInterface, true), oif(u.Interface, true),
			{&expr.Rt{Register: 1, Key: expr.RtNexthop4}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u.Gateway.AsSlice()}},
			r.inLAN(16, false)}
		if c.Partner.IsValid() {
			pin = append(pin, addrCmp(12, c.Partner, expr.CmpOpNeq))
		}
		pin = append(pin, []expr.Any{
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(^MarkMask), Xor: native(m)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		})
		r.rule(fwd, pin...)
	}

	// Counters. Tx: from a LAN host to anything off the LAN that is not
	// the overlay. Rx: the reverse. The pair's own LAN addresses (the
	// lending traffic, after the borrower's SNAT) are left out.
	tx := [][]expr.Any{iif(c.LANInterface, true), r.inLAN(12, true), r.inLAN(16, false)}
	rx := [][]expr.Any{oif(c.LANInterface, true), r.inLAN(16, true), r.inLAN(12, false)}
	if c.Overlay != "" {
		tx = append(tx, oif(c.Overlay, false))
		rx = append(rx, iif(c.Overlay, false))
	}
	for _, a := range []netip.Addr{c.LANAddr, c.Partner} {
		if a.IsValid() {
			tx = append(tx, addrCmp(12, a, expr.CmpOpNeq))
			rx = append(rx, addrCmp(16, a, expr.CmpOpNeq))
		}
	}
	r.rule(fwd, append(tx, []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterTx}})...)
	r.rule(fwd, append(rx, []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterRx}})...)

	if l := c.Lend; l != nil {
		pf := r.chain("port-forward", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
		// iifname WAN ip daddr PUB udp dport PP dnat to PARTNER:PARTNERPORT
		r.rule(pf, iif(l.Interface, true), addrCmp(16, l.PublicAddr, expr.CmpOpEq), udpPort(2, l.PublicPort),
			natTo(expr.NATTypeDestNAT, c.Partner, l.PartnerPort))
	}
	out := r.chain("nat-out", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	if l := c.Lend; l != nil {
		// oifname WAN ip saddr PARTNER udp sport PARTNERPORT snat to PUB:PP
		r.rule(out, oif(l.Interface, true), addrCmp(12, c.Partner, expr.CmpOpEq), udpPort(0, l.PartnerPort),
			natTo(expr.NATTypeSourceNAT, l.PublicAddr, l.PublicPort))
	}
	for _, w := range c.wanInterfaces() {
		// oifname WAN ip saddr @lan masquerade
		r.rule(out, oif(w, true), r.inLAN(12, true), []expr.Any{&expr.Masq{}})
	}
	if c.hasBorrowed() {
		// A LAN host's packet for a borrowed uplink leaves on the interface
		// it came in on, towards a router on the host's own subnet: the
		// kernel would tell the host to use the partner directly, and the
		// host's traffic would bypass this gateway (and its counters).
		// oifname LAN icmp type redirect drop
		noRedirect := r.chain("no-redirects", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
		r.rule(noRedirect, oif(c.LANInterface, true), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{5}}, // ICMP redirect
			&expr.Verdict{Kind: expr.VerdictDrop},
		})
		// iifname LAN oifname LAN ip saddr @lan ip daddr != @lan snat to LANADDR
		r.rule(out, iif(c.LANInterface, true), oif(c.LANInterface, true), r.inLAN(12, true), r.inLAN(16, false),
			natTo(expr.NATTypeSourceNAT, c.LANAddr, 0))
	}
	r.buildCopy()
	return nil
}

func (r *ruleset) chain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return r.nft.AddChain(&nftables.Chain{Name: name, Table: r.t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
}

func (r *ruleset) rule(ch *nftables.Chain, parts ...[]expr.Any) {
	var exprs []expr.Any
	for _, p := range parts {
		exprs = append(exprs, p...)
	}
	r.nft.AddRule(&nftables.Rule{Table: r.t, Chain: ch, Exprs: exprs})
}

// inLAN matches the IPv4 address at off in the network header (12:
// source, 16: destination) against the LAN set, or its complement.
func (r *ruleset) inLAN(off uint32, in bool) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: r.lan.Name, SetID: r.lan.ID, Invert: !in},
	}
}

// wanInterfaces are the distinct interfaces of the own uplinks and the
// lent link: where LAN traffic is masqueraded.
func (c *Config) wanInterfaces() []string {
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, u := range c.Uplinks {
		if !u.Borrowed {
			add(u.Interface)
		}
	}
	if c.Lend != nil {
		add(c.Lend.Interface)
	}
	return out
}

func (c *Config) hasBorrowed() bool {
	for _, u := range c.Uplinks {
		if u.Borrowed {
			return true
		}
	}
	return false
}

func iif(name string, eq bool) []expr.Any { return ifCmp(expr.MetaKeyIIFNAME, name, eq) }

func oif(name string, eq bool) []expr.Any { return ifCmp(expr.MetaKeyOIFNAME, name, eq) }

func ifCmp(key expr.MetaKey, name string, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: b}}
}

func addrCmp(off uint32, a netip.Addr, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()},
	}
}

// udpPort matches UDP and the port at off in the transport header (0:
// source, 2: destination).
func udpPort(off uint32, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func ctStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(expr.CtStateBitNEW), Xor: native(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native(0)},
	}
}

// natTo is `snat to a[:port]` or `dnat to a[:port]` (port 0: keep it).
func natTo(typ expr.NATType, a netip.Addr, port uint16) []expr.Any {
	out := []expr.Any{&expr.Immediate{Register: 1, Data: a.AsSlice()}}
	n := &expr.NAT{Type: typ, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}
	if port != 0 {
		out = append(out, &expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)})
		n.RegProtoMin, n.Specified = 2, true
	}
	return append(out, n)
}

// native encodes a mark or ct state the way the kernel keeps it in a
// register: host byte order.
func native(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// prefixEnd is the first address after p; ok is false if p reaches the
// end of the address space.
func prefixEnd(p netip.Prefix) (netip.Addr, bool) {
	a := p.Addr().As4()
	v := uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3])
	v += 1 << (32 - p.Bits())
	if v > 0xffffffff {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// readCounters reads both counter objects.
func readCounters(nft *nftables.Conn) (tx, rx expr.Counter, err error) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	objs, err := nft.GetNamedObjects(t)
	if err != nil {
		return tx, rx, fmt.Errorf("gateway: reading the counters of table %s: %w", TableName, err)
	}
	found := 0
	for _, o := range objs {
		no, ok := o.(*nftables.NamedObj)
		if !ok {
			continue
		}
		c, ok := no.Obj.(*expr.Counter)
		if !ok {
			continue
		}
		switch no.Name {
		case CounterTx:
			tx, found = *c, found+1
		case CounterRx:
			rx, found = *c, found+1
		}
	}
	if found != 2 {
		return tx, rx, fmt.Errorf("gateway: table %s lacks its counters (%d of 2 found)", TableName, found)
	}
	return tx, rx, nil
}
