package trace

import (
	"fmt"
	"strconv"
)

// StreamKey names one vCPU stream.
type StreamKey struct {
	Node      string
	Namespace string
	VMI       string
	VCPU      int32
}

func (k StreamKey) String() string {
	return k.Node + "/" + k.Namespace + "/" + k.VMI + "/" + strconv.Itoa(int(k.VCPU))
}

// DefaultMaxStreams bounds the streams a StreamTable accepts.
const DefaultMaxStreams = 1 << 16

// StreamTable interns the stream keys of rows into dense ids 0, 1, ... and
// checks that each stream's rows are in time order. Looking up a known
// stream does not allocate.
type StreamTable struct {
	// Max bounds the number of streams (DefaultMaxStreams when 0).
	Max     int
	ids     map[string]int32
	keys    []StreamKey
	last    []int64
	scratch []byte
	prevKey []byte
	prevID  int32
}

// Len is the number of streams seen.
func (t *StreamTable) Len() int { return len(t.keys) }

// Key returns the key of stream id.
func (t *StreamTable) Key(id int32) StreamKey { return t.keys[id] }

// Intern returns row's stream id, and whether the stream is new. line is
// used in errors: a row earlier than the previous row of its stream, or one
// stream too many.
func (t *StreamTable) Intern(row *Row, line int64) (id int32, isNew bool, err error) {
	b := append(t.scratch[:0], row.Node...)
	b = append(b, 0)
	b = append(b, row.Namespace...)
	b = append(b, 0)
	b = append(b, row.VMI...)
	b = append(b, 0, byte(row.VCPU>>8), byte(row.VCPU))
	t.scratch = b
	if t.prevKey != nil && string(b) == string(t.prevKey) {
		id = t.prevID
	} else {
		var ok bool
		id, ok = t.ids[string(b)]
		if !ok {
			max := t.Max
			if max == 0 {
				max = DefaultMaxStreams
			}
			if len(t.keys) >= max {
				return 0, false, &SyntaxError{Line: line, Msg: fmt.Sprintf("more than %d vCPU streams", max)}
			}
			if t.ids == nil {
				t.ids = make(map[string]int32)
			}
			id = int32(len(t.keys))
			t.ids[string(b)] = id
			t.keys = append(t.keys, StreamKey{Node: string(row.Node), Namespace: string(row.Namespace), VMI: string(row.VMI), VCPU: row.VCPU})
			t.last = append(t.last, row.TimeNS)
			isNew = true
		}
		t.prevKey = append(t.prevKey[:0], b...)
		t.prevID = id
	}
	if row.TimeNS < t.last[id] {
		return id, isNew, &SyntaxError{Line: line, Msg: fmt.Sprintf("time_ns %d is before time_ns %d of an earlier row of vCPU %s: the rows of one vCPU must be in time order", row.TimeNS, t.last[id], t.keys[id])}
	}
	t.last[id] = row.TimeNS
	return id, isNew, nil
}
