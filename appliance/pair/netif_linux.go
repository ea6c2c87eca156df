package pair

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type linuxLink struct {
	name string
	vip  netip.Prefix
	nl   *netlink.Handle
	fd   int // AF_PACKET socket bound to the interface, send only
}

// openLANLink opens netlink and a packet socket on the interface in the
// calling thread's network namespace.
func openLANLink(name string, vip netip.Prefix) (lanLink, error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("pair: netlink: %w", err)
	}
	l := &linuxLink{name: name, vip: vip, nl: nl, fd: -1}
	link, err := nl.LinkByName(name)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("pair: LAN interface %q: %w", name, err)
	}
	if len(link.Attrs().HardwareAddr) != 6 {
		nl.Close()
		return nil, fmt.Errorf("pair: LAN interface %q is not Ethernet (hardware address %v)", name, link.Attrs().HardwareAddr)
	}
	// Protocol 0: the socket receives nothing, it only sends.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: link.Attrs().Index})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("pair: packet socket on %s: %w", name, err)
	}
	l.fd = fd
	return l, nil
}

func (l *linuxLink) addr(lease time.Duration) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: l.vip.Addr().AsSlice(), Mask: net.CIDRMask(l.vip.Bits(), 32)}}
	if lease > 0 {
		secs := int(lease / time.Second)
		a.ValidLft, a.PreferedLft = secs, secs
	}
	return a
}

func (l *linuxLink) addVIP(lease time.Duration) error {
	link, err := l.nl.LinkByName(l.name)
	if err != nil {
		return err
	}
	return l.nl.AddrReplace(link, l.addr(lease))
}

func (l *linuxLink) delVIP() error {
	link, err := l.nl.LinkByName(l.name)
	if err != nil {
		return err
	}
	err = l.nl.AddrDel(link, l.addr(0))
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

func (l *linuxLink) up() (bool, error) {
	link, err := l.nl.LinkByName(l.name)
	if err != nil {
		return false, err
	}
	a := link.Attrs()
	if a.Flags&net.FlagUp == 0 || a.RawFlags&unix.IFF_LOWER_UP == 0 {
		return false, nil
	}
	return a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown, nil
}

// garpFrame is a gratuitous ARP request: sender and target are the VIP,
// broadcast, so every host that has the VIP in its ARP cache updates it
// (Linux does so even within its locktime) and none adds it unasked.
func garpFrame(mac net.HardwareAddr, vip netip.Addr) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	ip := vip.AsSlice()
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: mac, SourceProtAddress: ip,
		DstHwAddress: make([]byte, 6), DstProtAddress: ip,
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (l *linuxLink) garp() error {
	link, err := l.nl.LinkByName(l.name)
	if err != nil {
		return err
	}
	frame, err := garpFrame(link.Attrs().HardwareAddr, l.vip.Addr())
	if err != nil {
		return err
	}
	_, err = unix.Write(l.fd, frame)
	return err
}

func (l *linuxLink) close() error {
	l.nl.Close()
	return unix.Close(l.fd)
}

// listenPinned opens a UDP socket on addr pinned to the interface
// (SO_BINDTODEVICE), so its datagrams leave there whatever the routes say.
func listenPinned(iface string, addr netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface)
			if serr != nil {
				serr = fmt.Errorf("SO_BINDTODEVICE %s: %w", iface, serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}
