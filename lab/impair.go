package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Impairment is what Lab.Impair does to one ISP link. The zero value
// impairs nothing.
//
// Everything happens on the inet side of the link, so the appliance
// itself is untouched and sees no change of carrier or configuration:
//   - Loss drops each packet that inet sends into the link, towards the
//     appliance, with probability Loss percent (nftables `numgen random`):
//     like delay, and like netem on inet's port, it is one-way, so a
//     round trip (a probe and its reply) loses Loss percent, not twice it.
//   - Down drops every IPv4 packet in both directions (ARP still passes,
//     as it would to a modem whose ISP is down).
//   - Delay and Jitter hold each packet that inet sends into the link, that
//     is towards the appliance, for Delay plus a uniform offset in
//     [-Jitter, +Jitter] (never less than 0), in the lab's delay stage. The
//     other direction is not delayed, so the round trip of anything that
//     crosses the link grows by Delay ± Jitter, as with netem on inet's
//     port.
type Impairment struct {
	// Loss is the percentage of packets dropped, 0 to 100, in steps of
	// 0.01.
	Loss float64
	// Delay is added towards the appliance; at most 10 s.
	Delay time.Duration
	// Jitter is the half-width of the uniform random offset added to
	// Delay; at most 10 s.
	Jitter time.Duration
	// Down drops everything.
	Down bool
}

const maxImpairDelay = 10 * time.Second

// Check reports whether the impairment can be applied.
func (im Impairment) Check() error {
	switch {
	case math.IsNaN(im.Loss) || im.Loss < 0 || im.Loss > 100:
		return fmt.Errorf("loss %v%%: want 0 to 100", im.Loss)
	case im.Delay < 0 || im.Delay > maxImpairDelay:
		return fmt.Errorf("delay %v: want 0 to %v", im.Delay, maxImpairDelay)
	case im.Jitter < 0 || im.Jitter > maxImpairDelay:
		return fmt.Errorf("jitter %v: want 0 to %v", im.Jitter, maxImpairDelay)
	}
	return nil
}

// delayed reports whether the impairment needs the delay stage.
func (im Impairment) delayed() bool { return im.Delay > 0 || im.Jitter > 0 }

// lossPer10k is the loss in hundredths of a percent.
func (im Impairment) lossPer10k() uint32 { return uint32(math.Round(im.Loss * 100)) }

// String describes the impairment the way `causeway lab impair` takes it.
func (im Impairment) String() string {
	var parts []string
	if im.Down {
		parts = append(parts, "down")
	}
	if im.Loss > 0 {
		parts = append(parts, fmt.Sprintf("loss %g%%", im.Loss))
	}
	if im.Delay > 0 {
		parts = append(parts, "delay "+im.Delay.String())
	}
	if im.Jitter > 0 {
		parts = append(parts, "jitter "+im.Jitter.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// impairRouter is where impairments are applied: the Internet router.
const impairRouter = "inet"

// The lab's impairment objects in impairRouter.
const (
	nftImpairTable = "causeway_lab_impair"
	// Ingress from the link is impaired before conntrack (-200) and the
	// rest of the stack see it; egress after everything else.
	impairInPriority  nftables.ChainPriority = -300
	impairOutPriority nftables.ChainPriority = 300
	// Delay stages: the TUN of the link with index i is "dly<i>", its
	// routing table delayTableBase+i, its rules at delayRuleBase+2i (from
	// the TUN: back to the main table) and delayRuleBase+2i+1 (to the
	// link's subnet: into the TUN).
	delayTUNPrefix = "dly"
	// delayTUNQueue is the transmit queue of a delay stage's TUN.
	delayTUNQueue  = 20000
	delayTableBase = 100
	delayRuleBase  = 1000
	// kindDelayStage is the process kind of a delay stage.
	kindDelayStage = "delay-stage"
)

var impairTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftImpairTable}

// impairLink is one ISP link as the impairment code sees it.
type impairLink struct {
	node, iface string       // the far end: the appliance (or router) and its interface
	inet        string       // the interface at impairRouter
	subnet      netip.Prefix // the link's subnet
	index       int          // the link among impairRouter's interfaces, from 1
}

func (k impairLink) String() string { return k.node + "/" + k.iface }

func (k impairLink) tun() string       { return fmt.Sprintf("%s%d", delayTUNPrefix, k.index) }
func (k impairLink) table() int        { return delayTableBase + k.index }
func (k impairLink) rulePrio() int     { return delayRuleBase + 2*k.index }
func (k impairLink) stageName() string { return "delay-" + k.node + "-" + k.iface }
func (k impairLink) inChain() *nftables.Chain {
	return &nftables.Chain{Name: "in-" + k.inet, Table: impairTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(impairInPriority)}
}
func (k impairLink) outChain() *nftables.Chain {
	return &nftables.Chain{Name: "out-" + k.inet, Table: impairTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(impairOutPriority)}
}

// impairLink finds the link that node's interface iface has to the Internet
// router. node may be impairRouter itself, with iface one of its own.
func (t *topology) impairLink(node, dev string) (impairLink, error) {
	var links []string
	index := 0
	for _, v := range t.veths {
		var far, near iface
		switch {
		case v.a.node == impairRouter:
			far, near = v.b, v.a
		case v.b.node == impairRouter:
			far, near = v.a, v.b
		default:
			continue
		}
		index++
		links = append(links, far.node+"/"+far.name)
		if (far.node == node && far.name == dev) || (node == impairRouter && near.name == dev) {
			return impairLink{node: far.node, iface: far.name, inet: near.name,
				subnet: near.addr.Masked(), index: index}, nil
		}
	}
	return impairLink{}, fmt.Errorf("lab: %s/%s is not a link to %s (links: %s)",
		node, dev, impairRouter, strings.Join(links, ", "))
}

// ParseLink splits "NODE/IFACE".
func ParseLink(s string) (node, iface string, err error) {
	node, iface, ok := strings.Cut(s, "/")
	if !ok || node == "" || iface == "" || strings.Contains(iface, "/") {
		return "", "", fmt.Errorf("link %q: want NODE/IFACE, e.g. office-1a/wan1", s)
	}
	return node, iface, nil
}

// Impair sets the impairment of the link between node's interface iface
// and the Internet router (e.g. "office-1a", "wan1"), replacing whatever
// the link had: flags left zero are off. The zero Impairment is the same
// as Clear. See Impairment for what is done where.
func (l *Lab) Impair(ctx context.Context, node, iface string, im Impairment) error {
	if err := im.Check(); err != nil {
		return fmt.Errorf("lab: impair %s/%s: %w", node, iface, err)
	}
	k, err := l.t.impairLink(node, iface)
	if err != nil {
		return err
	}
	if im == (Impairment{}) {
		return l.clear(k)
	}
	ns := netnsName(l.instance, impairRouter)
	// A new stage each time: its settings are on its command line.
	if err := l.removeDelay(k); err != nil {
		return err
	}
	if im.delayed() {
		if err := l.addDelay(ctx, k, im); err != nil {
			return errors.Join(err, l.removeDelay(k))
		}
	}
	if err := setImpairRules(ns, k, im); err != nil {
		return fmt.Errorf("lab: impair %s: %w", k, err)
	}
	l.log.Info("link impaired", "link", k.String(), "impairment", im.String())
	return nil
}

// Clear removes everything Impair added for the link. Clearing a link
// that is not impaired is not an error. `Down` removes every impairment
// with the namespaces.
func (l *Lab) Clear(node, iface string) error {
	k, err := l.t.impairLink(node, iface)
	if err != nil {
		return err
	}
	return l.clear(k)
}

func (l *Lab) clear(k impairLink) error {
	err := errors.Join(l.removeDelay(k), delImpairRules(netnsName(l.instance, impairRouter), k))
	if err != nil {
		return fmt.Errorf("lab: clearing %s: %w", k, err)
	}
	l.log.Info("link impairment cleared", "link", k.String())
	return nil
}

// LinkCounters are the packets the impairment rules of one link have seen
// since the link was last impaired: In from the appliance, Out towards it.
type LinkCounters struct {
	In, Out DirectionCounters
}

// DirectionCounters count one direction of a link.
type DirectionCounters struct {
	// Packets reached the impairment rules; Dropped of them were dropped
	// (by Loss or Down). Packets towards the appliance are counted after
	// the delay stage.
	Packets, Dropped uint64
}

// ImpairCounters reads the link's counters. It fails if the link is not
// impaired.
func (l *Lab) ImpairCounters(node, iface string) (LinkCounters, error) {
	k, err := l.t.impairLink(node, iface)
	if err != nil {
		return LinkCounters{}, err
	}
	var out LinkCounters
	err = withNetnsFD(netnsName(l.instance, impairRouter), func(fd int) error {
		c, err := nftConn(fd)
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		for _, d := range []struct {
			ch  *nftables.Chain
			ctr *DirectionCounters
		}{{k.inChain(), &out.In}, {k.outChain(), &out.Out}} {
			rules, err := c.GetRules(impairTable, d.ch)
			if err != nil || len(rules) == 0 {
				return fmt.Errorf("%s is not impaired (%v)", k, err)
			}
			for _, r := range rules {
				for _, e := range r.Exprs {
					if ctr, ok := e.(*expr.Counter); ok {
						switch string(r.UserData) {
						case ruleTotal:
							d.ctr.Packets += ctr.Packets
						case ruleDrop:
							d.ctr.Dropped += ctr.Packets
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return LinkCounters{}, fmt.Errorf("lab: %w", err)
	}
	return out, nil
}

// Rule tags (UserData) of the impairment chains.
const (
	ruleTotal = "causeway-lab:total"
	ruleDrop  = "causeway-lab:drop"
)

// setImpairRules replaces the link's two chains in one transaction:
//
//	chain in-<link>  { type filter hook prerouting priority -300; iifname <link> counter; <drop> }
//	chain out-<link> { type filter hook postrouting priority 300; oifname <link> counter; <drop> }
//
// where <drop> is `counter drop` for Down (both chains) and `numgen random
// mod 10000 < loss*100 counter drop` for Loss (the out chain only).
func setImpairRules(ns string, k impairLink, im Impairment) error {
	return withNetnsFD(ns, func(fd int) error {
		c, err := nftConn(fd)
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		t := c.AddTable(impairTable)
		for _, d := range []struct {
			ch  *nftables.Chain
			key expr.MetaKey
		}{{k.inChain(), expr.MetaKeyIIFNAME}, {k.outChain(), expr.MetaKeyOIFNAME}} {
			d.ch.Table = t
			ch := c.AddChain(d.ch)
			c.FlushChain(ch)
			match := []expr.Any{
				&expr.Meta{Key: d.key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(k.inet)},
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: []byte(ruleTotal),
				Exprs: append(slices.Clone(match), &expr.Counter{})})
			var drop []expr.Any
			switch {
			case im.Down:
				drop = []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
			case im.Loss > 0 && d.key == expr.MetaKeyOIFNAME:
				// numgen leaves a host-order number; compare it in network
				// order, as nft does for `<`.
				limit := binary.BigEndian.AppendUint32(nil, im.lossPer10k())
				drop = []expr.Any{
					&expr.Numgen{Register: 1, Modulus: 10000, Type: unix.NFT_NG_RANDOM},
					&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
					&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: limit},
					&expr.Counter{},
					&expr.Verdict{Kind: expr.VerdictDrop},
				}
			}
			if drop != nil {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: []byte(ruleDrop),
					Exprs: append(slices.Clone(match), drop...)})
			}
		}
		return c.Flush()
	})
}

// delImpairRules deletes the link's chains, if there are any.
func delImpairRules(ns string, k impairLink) error {
	return withNetnsFD(ns, func(fd int) error {
		c, err := nftConn(fd)
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		n, others := 0, 0
		for _, ch := range chains {
			switch {
			case ch.Table.Name != nftImpairTable:
			case ch.Name == k.inChain().Name || ch.Name == k.outChain().Name:
				c.FlushChain(ch)
				c.DelChain(ch)
				n++
			default:
				others++
			}
		}
		if n == 0 {
			return nil
		}
		if others == 0 {
			// The last impaired link: the table goes too.
			c.DelTable(impairTable)
		}
		return c.Flush()
	})
}

// withNetnsFD calls fn with a file descriptor of the named namespace.
func withNetnsFD(ns string, fn func(fd int) error) error {
	fd, err := unix.Open(netnsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", ns, err)
	}
	defer unix.Close(fd)
	return fn(fd)
}

// delayStageArgv is the command line of the link's delay stage.
func (l *Lab) delayStageArgv(k impairLink, im Impairment) []string {
	return []string{l.binary, "lab", "delay-stage", "--tun", k.tun(),
		"--delay", im.Delay.String(), "--jitter", im.Jitter.String()}
}

// addDelay starts the link's delay stage in the router's namespace and,
// once its TUN exists, routes the link's egress through it: a rule sends
// what is addressed to the link's subnet to the TUN's own table (default
// dev dlyN), and a rule ahead of it sends what comes back out of the TUN
// to the main table, which forwards it into the link. The TUN accepts
// packets with the router's own source addresses (accept_local) and does
// no reverse-path filtering, so the router's own replies pass it too.
// Forwarded packets cross the router twice: their TTL drops by 2.
func (l *Lab) addDelay(ctx context.Context, k impairLink, im Impairment) error {
	ns := netnsName(l.instance, impairRouter)
	name := k.stageName()
	r, err := l.startRecorded(name, kindDelayStage, impairRouter, filepath.Join(l.dir, name+".log"), l.delayStageArgv(k, im))
	if err != nil {
		return fmt.Errorf("lab: delay stage for %s: %w", k, err)
	}
	h, err := netlinkHandle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var tun netlink.Link
	err = poll(wctx, func(context.Context) error {
		if err := l.exited(name, r); err != nil {
			return err
		}
		var err error
		tun, err = h.LinkByName(k.tun())
		return err
	})
	if err != nil {
		return fmt.Errorf("lab: delay stage for %s did not start: %w%s", k, err, logTail(r.Log))
	}
	for _, s := range [][2]string{
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/" + k.tun() + "/rp_filter", "0"},
		{"net/ipv4/conf/" + k.tun() + "/accept_local", "1"},
	} {
		if err := writeSysctl(ns, s[0], s[1]); err != nil {
			return err
		}
	}
	if err := h.LinkSetAlias(tun, "delay for "+k.String()); err != nil {
		return fmt.Errorf("lab: %s: %w", k.tun(), err)
	}
	// The TUN's transmit queue is what the stage reads from: at the
	// default 500 packets, a stage the scheduler holds off for a few
	// tens of milliseconds under a fast stream would drop packets no
	// impairment asked for.
	if err := h.LinkSetTxQLen(tun, delayTUNQueue); err != nil {
		return fmt.Errorf("lab: %s: %w", k.tun(), err)
	}
	if err := h.LinkSetUp(tun); err != nil {
		return fmt.Errorf("lab: bringing %s up: %w", k.tun(), err)
	}
	rt := &netlink.Route{LinkIndex: tun.Attrs().Index, Table: k.table(), Scope: netlink.SCOPE_LINK,
		Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))}
	if err := h.RouteReplace(rt); err != nil {
		return fmt.Errorf("lab: route via %s: %w", k.tun(), err)
	}
	back := netlink.NewRule()
	back.Priority, back.IifName, back.Table = k.rulePrio(), k.tun(), unix.RT_TABLE_MAIN
	into := netlink.NewRule()
	into.Priority, into.Dst, into.Table = k.rulePrio()+1, ipNet(k.subnet), k.table()
	for _, rule := range []*netlink.Rule{back, into} {
		if err := h.RuleAdd(rule); err != nil {
			return fmt.Errorf("lab: adding rule %s: %w", rule, err)
		}
	}
	return nil
}

// removeDelay takes the link's egress off its delay stage and stops the
// stage; the TUN and its route go with the process. Either may be gone
// already.
func (l *Lab) removeDelay(k impairLink) error {
	ns := netnsName(l.instance, impairRouter)
	h, err := netlinkHandle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("lab: listing rules in %s: %w", ns, err)
	}
	var errs []error
	for _, r := range rules {
		if r.Priority == k.rulePrio() || r.Priority == k.rulePrio()+1 {
			if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("deleting rule %s: %w", r, err))
			}
		}
	}
	name := k.stageName()
	l.mu.Lock()
	l.reloadLocked()
	var rec *procRecord
	if r := l.procLocked(name); r != nil {
		cp := *r
		rec = &cp
	}
	l.mu.Unlock()
	if rec != nil {
		if err := stopProcess(*rec, stopTimeout); err != nil {
			errs = append(errs, err)
		} else {
			l.mu.Lock()
			l.reloadLocked()
			l.st.Processes = slices.DeleteFunc(l.st.Processes, func(p procRecord) bool { return p.Name == name })
			if err := saveState(l.dir, l.st); err != nil {
				errs = append(errs, err)
			}
			l.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}
