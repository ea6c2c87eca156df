// Package gateway makes a Linux network namespace the Internet gateway of
// a site's LAN: traffic from the LAN prefixes that leaves for the
// Internet is masqueraded (nftables table "causeway-gw") and balanced per
// flow over the healthy uplinks by a multipath default route in a routing
// table of the gateway's own, which policy rules consult for LAN sources
// only after the main table without its default route, so that overlay
// and remote-LAN routes keep winning. A flow stays on the uplink it
// started on (its connection mark picks that uplink's table) until the
// uplink leaves the healthy set; SetHealthy changes the set at once.
//
// For a PAIR of appliances on one LAN it also does both sides of
// lending: a borrowed uplink is the partner's, reached over the LAN,
// with what goes there SNATed to the gateway's own LAN address (and a
// policy route for the appliance's own WireGuard socket on it); Lend
// port-forwards a public UDP port to the partner's WireGuard socket and
// NATs the partner's traffic on one WAN link.
//
// Counters of the forwarded LAN<->Internet traffic are nftables counter
// objects, read on demand: nothing is done per packet in Go. Everything
// goes through netlink and nftables directly, on an undo stack that
// Close runs. docs/gateway.md describes the rules and the counters.
package gateway
