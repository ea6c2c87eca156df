package lab

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The lab's nftables objects, all in one table per namespace.
const (
	nftTable     = "causeway_lab"
	nftNATChain  = "postrouting"
	nftFragChain = "fragments"
	// fragPriority runs the fragment counter before conntrack's defrag
	// hook (-400) would reassemble what it should count.
	fragPriority nftables.ChainPriority = -500
)

var labTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftTable}

// nftConn opens an nftables connection inside the namespace nsFD refers to.
func nftConn(nsFD int) (*nftables.Conn, error) {
	return nftables.New(nftables.WithNetNSFd(nsFD), nftables.AsLasting())
}

// addMasquerade adds `ip saddr src oifname out masquerade` to the
// namespace's postrouting NAT chain.
func addMasquerade(nsFD int, out string, src netip.Prefix) error {
	c, err := nftConn(nsFD)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(labTable)
	ch := c.AddChain(&nftables.Chain{
		Name:     nftNATChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	mask := netipMask(src)
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(out)},
		// ip saddr & mask == network
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: src.Masked().Addr().AsSlice()},
		&expr.Masq{},
	}})
	return c.Flush()
}

// addFragmentCounter counts, in prerouting, every IPv4 packet that is a
// fragment: the More Fragments flag set or a non-zero fragment offset
// (`ip frag-off & 0x3fff != 0 counter`).
func addFragmentCounter(nsFD int) error {
	c, err := nftConn(nsFD)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(labTable)
	ch := c.AddChain(fragChain(t))
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0}},
		&expr.Counter{},
	}})
	return c.Flush()
}

func fragChain(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{
		Name:     nftFragChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(fragPriority),
	}
}

// readFragmentCounter returns the packets the namespace's fragment counter
// has counted.
func readFragmentCounter(ns string) (uint64, error) {
	fd, err := unix.Open(netnsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", ns, err)
	}
	defer unix.Close(fd)
	c, err := nftConn(fd)
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	rules, err := c.GetRules(labTable, fragChain(labTable))
	if err != nil {
		return 0, fmt.Errorf("reading the fragment counter in %s: %w", ns, err)
	}
	var n uint64
	found := false
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				n += ctr.Packets
				found = true
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("no fragment counter in %s", ns)
	}
	return n, nil
}

// ifname pads an interface name the way the kernel compares it.
func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

// netipMask is the network mask of p as 4 or 16 bytes.
func netipMask(p netip.Prefix) []byte {
	n := p.Addr().BitLen() / 8
	b := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}
