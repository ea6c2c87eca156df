package bind

import "encoding/binary"

// WireGuard message types and sizes (the protocol's, as in wireguard-go's
// device package).
const (
	msgInitiation  = 1
	msgResponse    = 2
	msgCookieReply = 3
	msgTransport   = 4

	sizeInitiation  = 148
	sizeResponse    = 92
	sizeCookieReply = 64
	sizeTransportHd = 16 + 16 // header and an empty payload's tag
)

func msgType(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b), true
}

func isInitiation(b []byte) bool {
	t, _ := msgType(b)
	return t == msgInitiation && len(b) == sizeInitiation
}

// isCookieReply reports whether bufs is a single cookie reply.
func isCookieReply(bufs [][]byte) bool {
	if len(bufs) != 1 {
		return false
	}
	t, _ := msgType(bufs[0])
	return t == msgCookieReply && len(bufs[0]) == sizeCookieReply
}

// handshakeSenderIndex returns the sender index of a handshake initiation
// or response that WireGuard sends: the index this side chose for the
// session, which the peer's messages will carry as their receiver.
func handshakeSenderIndex(bufs [][]byte) (uint32, bool) {
	if len(bufs) != 1 {
		return 0, false
	}
	b := bufs[0]
	t, _ := msgType(b)
	if (t == msgInitiation && len(b) == sizeInitiation) || (t == msgResponse && len(b) == sizeResponse) {
		return binary.LittleEndian.Uint32(b[4:8]), true
	}
	return 0, false
}

// receiverIndex returns the receiver index of a received response, cookie
// reply or transport message: an index this side chose.
func receiverIndex(b []byte) (uint32, bool) {
	t, ok := msgType(b)
	if !ok {
		return 0, false
	}
	switch {
	case t == msgTransport && len(b) >= sizeTransportHd:
		return binary.LittleEndian.Uint32(b[4:8]), true
	case t == msgCookieReply && len(b) == sizeCookieReply:
		return binary.LittleEndian.Uint32(b[4:8]), true
	case t == msgResponse && len(b) == sizeResponse:
		return binary.LittleEndian.Uint32(b[8:12]), true
	}
	return 0, false
}
