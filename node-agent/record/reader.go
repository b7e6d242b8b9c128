package record

import (
	"io"

	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Row is one observation of a trace, with names as strings (interned: a
// long replay does not allocate per row).
type Row struct {
	// Line is the row's line number in the file.
	Line      int64
	TimeNS    int64
	Node      string
	Namespace string
	VMI       string
	VCPU      int
	// Event is the counter name; for a sample row, the sampled counter.
	Event  string
	Sample bool
	// Value is the count, or the sampled guest instruction pointer.
	Value uint64
}

// Reader streams a trace with node-agent/trace's reader, checking each
// vCPU's rows are in time order.
type Reader struct {
	r       *trace.Reader
	streams trace.StreamTable
	meta    []Meta
	pending *Row
	intern  map[string]string
}

// NewReader reads up to the first row, collecting the metadata before it.
func NewReader(src io.Reader) (*Reader, error) {
	t := &Reader{r: trace.NewReader(src), intern: map[string]string{}}
	for {
		kind, err := t.r.Next()
		if err == io.EOF {
			return t, nil
		}
		if err != nil {
			return nil, err
		}
		if kind == trace.KindMeta {
			k, v := t.r.Meta()
			t.meta = append(t.meta, Meta{Key: string(k), Value: string(v)})
			continue
		}
		row, err := t.convert()
		if err != nil {
			return nil, err
		}
		t.pending = &row
		return t, nil
	}
}

// Meta returns the metadata lines before the first row.
func (t *Reader) Meta() []Meta { return t.meta }

// Next returns the next row, or io.EOF at the end. Errors name the line.
func (t *Reader) Next() (Row, error) {
	if p := t.pending; p != nil {
		t.pending = nil
		return *p, nil
	}
	for {
		kind, err := t.r.Next()
		if err != nil {
			return Row{}, err
		}
		if kind == trace.KindRow {
			return t.convert()
		}
	}
}

func (t *Reader) convert() (Row, error) {
	row := t.r.Row()
	if _, _, err := t.streams.Intern(row, t.r.Line()); err != nil {
		return Row{}, err
	}
	c := row.Event.Counter()
	return Row{
		Line: t.r.Line(), TimeNS: row.TimeNS,
		Node: t.str(row.Node), Namespace: t.str(row.Namespace), VMI: t.str(row.VMI),
		VCPU: int(row.VCPU), Event: c.String(), Sample: row.Event.IsSample(), Value: row.Value,
	}, nil
}

func (t *Reader) str(b []byte) string {
	if s, ok := t.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(t.intern) < 1<<16 {
		t.intern[s] = s
	}
	return s
}
