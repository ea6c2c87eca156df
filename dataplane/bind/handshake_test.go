package bind

import (
	"crypto/rand"
	"testing"
)

func TestInitiationOpenerRefuses(t *testing.T) {
	o, err := newInitiationOpener(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, sizeInitiation)
	for range 100 {
		rand.Read(msg)
		msg[0], msg[1], msg[2], msg[3] = msgInitiation, 0, 0, 0
		if _, ok := o.open(msg); ok {
			t.Fatal("a random initiation opened")
		}
	}
	if _, ok := o.open(msg[:100]); ok {
		t.Fatal("a short initiation opened")
	}
}
