package gateway

import (
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Overlay copies: while the two members of a PAIR hand the site over, a
// remote site routes the site's LAN prefixes to one member or the other
// (each remote decides on its own, from the controller and its probes),
// and WireGuard accepts a packet from a member only if the remote routes
// its source there. A LAN host's packet into the overlay that the
// gateway forwards itself is lost at every remote that still holds the
// partner. With overlay copies on, the gateway also sends a copy of every
// such packet to the partner over the LAN (nftables dup), which forwards
// it into its own tunnel: each remote accepts exactly one of the two, the
// one from the member it holds, and drops the other (it has the wrong
// source for that peer). The copies are the partner's to forward, never
// to copy again: packets whose Ethernet source is the partner's are not
// copied, so two members with copies on cannot loop.
//
//	chain overlay-copy { # filter forward -10, with Partner and Overlay
//	  iifname LAN oifname OVERLAY ip saddr @lan ether saddr != PARTNER-MAC counter name "overlay-copied" dup to PARTNER device LAN
//	}

const (
	// CounterCopied counts the packets SetOverlayCopy copied.
	CounterCopied = "overlay-copied"
	copyChain     = "overlay-copy"
)

// buildCopy adds the (empty) overlay-copy chain and its counter.
func (r *ruleset) buildCopy() {
	c := r.c
	if !c.Partner.IsValid() || c.Overlay == "" {
		return
	}
	r.nft.AddObj(&nftables.NamedObj{Table: r.t, Name: CounterCopied, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	r.chain(copyChain, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(*nftables.ChainPriorityFilter-10))
}

// SetOverlayCopy turns the overlay copies on (partnerMAC is the partner's
// LAN interface address, whose frames are never copied) or off (nil).
// It needs Config.Partner and Config.Overlay. Turning them on again with
// another address replaces the rule.
func (g *Gateway) SetOverlayCopy(partnerMAC net.HardwareAddr) error {
	c := &g.cfg
	if !c.Partner.IsValid() || c.Overlay == "" {
		return errors.New("gateway: overlay copies need Config.Partner and Config.Overlay")
	}
	if partnerMAC != nil && len(partnerMAC) != 6 {
		return fmt.Errorf("gateway: overlay copies: want the partner's 6-byte Ethernet address, got %v", partnerMAC)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("gateway: SetOverlayCopy after Close")
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	ch := &nftables.Chain{Table: t, Name: copyChain}
	g.nft.FlushChain(ch)
	if partnerMAC != nil {
		lan := &nftables.Set{Table: t, Name: lanSet}
		exprs := []expr.Any{}
		for _, part := range [][]expr.Any{
			iif(c.LANInterface, true), oif(c.Overlay, true),
			{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: lan.Name},
			},
			{
				&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_ETHER)},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(partnerMAC)},
				&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterCopied},
				&expr.Immediate{Register: 1, Data: c.Partner.AsSlice()},
				&expr.Immediate{Register: 2, Data: native(uint32(g.pol.links[c.LANInterface]))},
				&expr.Dup{RegAddr: 1, RegDev: 2, IsRegDevSet: true},
			},
		} {
			exprs = append(exprs, part...)
		}
		g.nft.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	if err := g.nft.Flush(); err != nil {
		return fmt.Errorf("gateway: setting the overlay copies (on: %v): %w", partnerMAC != nil, err)
	}
	g.copying = partnerMAC != nil
	return nil
}

// OverlayCopy reports whether the overlay copies are on and how many
// packets they copied over the life of the gateway.
func (g *Gateway) OverlayCopy() (on bool, copied uint64, err error) {
	g.mu.Lock()
	on = g.copying
	g.mu.Unlock()
	objs, err := g.nft.GetNamedObjects(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName})
	if err != nil {
		return on, 0, fmt.Errorf("gateway: reading the overlay copy counter: %w", err)
	}
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok && no.Name == CounterCopied {
			if c, ok := no.Obj.(*expr.Counter); ok {
				return on, c.Packets, nil
			}
		}
	}
	return on, 0, fmt.Errorf("gateway: table %s has no counter %s", TableName, CounterCopied)
}
