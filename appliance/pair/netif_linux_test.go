package pair

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// TestGARPFrame decodes the frame that announces the VIP.
func TestGARPFrame(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0xaa, 0x01}
	ip := netip.MustParseAddr("10.10.0.1")
	b, err := garpFrame(mac, ip)
	if err != nil {
		t.Fatal(err)
	}
	pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp, _ := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || arp == nil {
		t.Fatalf("not Ethernet + ARP: %v", pkt)
	}
	if !bytes.Equal(eth.DstMAC, layers.EthernetBroadcast) || !bytes.Equal(eth.SrcMAC, mac) || eth.EthernetType != layers.EthernetTypeARP {
		t.Errorf("Ethernet header %+v", eth)
	}
	if arp.Operation != layers.ARPRequest || !bytes.Equal(arp.SourceHwAddress, mac) ||
		!bytes.Equal(arp.SourceProtAddress, ip.AsSlice()) || !bytes.Equal(arp.DstProtAddress, ip.AsSlice()) ||
		!bytes.Equal(arp.DstHwAddress, make([]byte, 6)) || arp.Protocol != layers.EthernetTypeIPv4 {
		t.Errorf("ARP %+v", arp)
	}
	if len(b) != 60 { // 14 + 28, padded to the Ethernet minimum
		t.Errorf("%d bytes", len(b))
	}
}
