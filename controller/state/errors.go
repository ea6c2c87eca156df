package state

import (
	"errors"
	"fmt"
	"strings"

	"github.com/causeway-net/causeway/controller/store"
)

// Code classifies an Error; the API maps each code to an HTTP status and a
// problem type.
type Code string

const (
	CodeInvalid         Code = "invalid"          // the input breaks a rule; Fields says which
	CodeNotFound        Code = "not-found"        // no such thing, or not the caller's to see
	CodeConflict        Code = "conflict"         // clashes with what exists
	CodeForbidden       Code = "forbidden"        // the caller's scope does not allow it
	CodeUnauthenticated Code = "unauthenticated"  // no, unknown, expired or revoked credential
	CodeTokenInvalid    Code = "token-invalid"    // enrollment token unknown
	CodeTokenUsed       Code = "token-used"       // enrollment token already used
	CodeTokenExpired    Code = "token-expired"    // enrollment token past its expiry
	CodeTokenScope      Code = "token-wrong-site" // enrollment token is for another tenant or site
)

// FieldError is one problem with one input field, named as in the API
// ("lan_prefixes[1]").
type FieldError struct {
	Field string `json:"field"`
	Msg   string `json:"detail"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Msg }

// Error is the error type of every State method that can fail for a reason
// the caller should hear about. Other errors are internal.
type Error struct {
	Code   Code
	Msg    string
	Fields []FieldError
}

func (e *Error) Error() string {
	if len(e.Fields) == 0 {
		return e.Msg
	}
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	if e.Msg == "" {
		return strings.Join(parts, "; ")
	}
	return e.Msg + ": " + strings.Join(parts, "; ")
}

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

func notFound(kind, ref string) *Error { return errorf(CodeNotFound, "%s %q not found", kind, ref) }

// ErrorCode returns the code of err if it is (or wraps) an *Error, else "".
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// fields collects FieldErrors; err returns nil when there are none.
type fields []FieldError

func (f *fields) add(field, format string, args ...any) {
	*f = append(*f, FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (f fields) err() error {
	if len(f) == 0 {
		return nil
	}
	return &Error{Code: CodeInvalid, Msg: "invalid input", Fields: f}
}

// storeErr turns a store constraint error into a conflict; a constraint
// only fires when a concurrent change beat a check made in the same
// transaction, which cannot happen with serialised writes, so this is a
// backstop.
func storeErr(err error) error {
	if errors.Is(err, store.ErrConflict) {
		return &Error{Code: CodeConflict, Msg: err.Error()}
	}
	return err
}
