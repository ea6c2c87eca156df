package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/causeway-net/causeway/controller/push"
	"github.com/causeway-net/causeway/controller/state"
)

// Problem is an RFC 9457 problem document. Type is a URN naming the kind
// of problem (urn:causeway:problem:<code>), stable for clients to match on.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Instance  string `json:"instance,omitempty"`
	RequestID string `json:"request_id"`
	// Errors lists the fields at fault, for validation problems.
	Errors []state.FieldError `json:"errors,omitempty"`

	retryAfter int // seconds; sets Retry-After when non-zero
}

// ProblemTypePrefix starts every problem type.
const ProblemTypePrefix = "urn:causeway:problem:"

// Problem codes beyond state's.
const (
	codeBadRequest  = "bad-request"
	codeTooLarge    = "body-too-large"
	codeMediaType   = "unsupported-media-type"
	codeRateLimited = "rate-limited"
	codeUnavailable = "unavailable"
	codeInternal    = "internal"
	codeNoRoute     = "no-route"
	codeMethod      = "method-not-allowed"
)

var problemKinds = map[string]struct {
	status int
	title  string
}{
	string(state.CodeInvalid):         {http.StatusUnprocessableEntity, "Invalid input"},
	string(state.CodeNotFound):        {http.StatusNotFound, "Not found"},
	string(state.CodeConflict):        {http.StatusConflict, "Conflict"},
	string(state.CodeForbidden):       {http.StatusForbidden, "Forbidden"},
	string(state.CodeUnauthenticated): {http.StatusUnauthorized, "Not authenticated"},
	string(state.CodeTokenInvalid):    {http.StatusUnauthorized, "Enrollment token not recognised"},
	string(state.CodeTokenExpired):    {http.StatusUnauthorized, "Enrollment token expired"},
	string(state.CodeTokenUsed):       {http.StatusConflict, "Enrollment token already used"},
	string(state.CodeTokenScope):      {http.StatusForbidden, "Enrollment token is for another tenant or site"},
	codeBadRequest:                    {http.StatusBadRequest, "Malformed request"},
	codeTooLarge:                      {http.StatusRequestEntityTooLarge, "Request body too large"},
	codeMediaType:                     {http.StatusUnsupportedMediaType, "Unsupported media type"},
	codeRateLimited:                   {http.StatusTooManyRequests, "Too many failed attempts"},
	codeUnavailable:                   {http.StatusServiceUnavailable, "Unavailable"},
	codeInternal:                      {http.StatusInternalServerError, "Internal error"},
	codeNoRoute:                       {http.StatusNotFound, "No such route"},
	codeMethod:                        {http.StatusMethodNotAllowed, "Method not allowed"},
}

func newProblem(code, detail string) *Problem {
	k, ok := problemKinds[code]
	if !ok {
		k = problemKinds[codeInternal]
		code = codeInternal
	}
	return &Problem{Type: ProblemTypePrefix + code, Title: k.title, Status: k.status, Detail: detail}
}

func (p *Problem) Error() string { return p.Title + ": " + p.Detail }

// problemFor turns any handler error into a problem. Errors that are not
// state.Errors or Problems are internal: their text is logged, not shown.
func problemFor(err error) (p *Problem, internal bool) {
	var pe *Problem
	var se *state.Error
	switch {
	case errors.As(err, &pe):
		return pe, false
	case errors.As(err, &se):
		p := newProblem(string(se.Code), se.Msg)
		p.Errors = se.Fields
		if len(se.Fields) > 0 && (se.Msg == "" || se.Msg == "invalid input") {
			p.Detail = se.Error()
		}
		return p, false
	case errors.Is(err, push.ErrClosed):
		p := newProblem(codeUnavailable, "the controller is shutting down; retry")
		p.retryAfter = 1
		return p, false
	}
	return newProblem(codeInternal, "internal error; quote the request id when reporting it"), true
}

func writeProblem(w http.ResponseWriter, r *http.Request, p *Problem) {
	p.Instance = r.URL.Path
	p.RequestID = requestIDFrom(r.Context())
	if p.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="causeway"`)
	}
	if p.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}
