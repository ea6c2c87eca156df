// Package bind is Causeway's multipath conn.Bind: it carries WireGuard's
// datagrams over one UDP socket per uplink, sends each peer's traffic on
// the path the appliance chose for it, and hands probes to a handler
// instead of WireGuard.
//
// # Peers and paths
//
// A path is a local uplink and a remote endpoint (PathID). A Peer is a set
// of candidate paths plus the active one; SetActive swaps the active path
// atomically, without touching the WireGuard device: the session keys are
// per peer, not per path, so no handshake is needed and the next datagram
// leaves on the new path.
//
// Every conn.Endpoint the bind hands WireGuard belongs to a peer, if the
// bind can tell which, and names the path the datagram came in on. When
// WireGuard roams (it adopts the endpoint of the last authenticated
// datagram) it therefore only ever switches between endpoints of the same
// peer, and Send maps each of them to that peer's active path: roaming is
// recorded (Peer.Roamed) but does not override the choice. A peer without
// configured paths, such as one behind a NAT, follows WireGuard: its
// traffic leaves on the path WireGuard last authenticated it on.
//
// The bind tells which peer an unknown source belongs to from the session
// index in transport, response and cookie messages (it notes the indices
// of the handshakes WireGuard sends), and for a handshake initiation from
// the initiator's static key, decrypted with Options.PrivateKey.
//
// # Probes
//
// Probes share the uplink sockets, and so the 5-tuples and NAT mappings,
// of WireGuard. Every received datagram for which probes.IsProbe is true
// goes to Options.Probes and never to WireGuard; SendProbe sends one on a
// given path.
//
// # Performance
//
// The data path matches wireguard-go's StdNetBind: batches of up to
// conn.IdealBatchSize datagrams per recvmmsg and sendmmsg, UDP GSO on send
// (without copying: segments are gathered with one iovec each) and UDP GRO
// on receive where the kernel supports them, socket buffers raised with
// SO_RCVBUFFORCE and SO_SNDBUFFORCE, and no allocation per datagram.
//
// The bind is Linux only; New fails elsewhere.
package bind
