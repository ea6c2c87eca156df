// Package probes measures the paths between appliances with small
// authenticated UDP probes and chooses the active path of each peer.
//
// A path is one local uplink to one remote endpoint. Probes travel on the
// same socket and 5-tuple as the WireGuard traffic of that path, so they see
// the same NAT mappings and queues; IsProbe tells them apart from WireGuard
// messages on receipt. The package opens no sockets: the bind carries the
// bytes, and every function that depends on time takes the current time as a
// parameter, so tests drive the clock explicitly.
//
// The pieces, in the order a packet meets them:
//
//   - Keyring holds the probe keys the controller distributes (the current
//     key, and during a rotation the previous or next one). Marshal and Parse
//     convert between Packet and its 48-byte wire form, authenticated with a
//     truncated HMAC-SHA256.
//   - Reflector answers requests statelessly: it verifies a request, turns
//     it into a reply that echoes the sequence number and the sender's
//     timestamp, and MACs it again. Measurement is round-trip only, so the
//     two ends need no clock synchronisation.
//   - Path keeps the statistics of one path (RTT min, mean, p50, p99; RFC 3550
//     jitter; sequence-based loss) and its up/down state with hysteresis.
//     Tracker holds the paths of an appliance behind one lock and uses a
//     Scheduler to say when each path's next probe is due.
//   - Selector chooses the active path of one peer from its candidates'
//     Stats and an SLA, and returns the reason of every move.
//
// docs/probes.md in the repository explains the defaults, the failover
// arithmetic and the bandwidth budget.
package probes
