// Package report is how the node agent tells the cluster what it sees:
// ThreatFinding objects for detections, the node heartbeat Lease with the
// node's capabilities, and the agent's own metrics.
package report

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
)

// VMIRef names a VMI.
type VMIRef struct{ Namespace, Name string }

func (r VMIRef) String() string { return r.Namespace + "/" + r.Name }

// Detection is one detector emission, ready for the API: the agent fills
// UIDs and introspection's attribution before reporting it.
type Detection struct {
	Type     v1alpha1.ThreatType
	Detector string
	Node     string
	Victim   VMIRef
	// VictimUID and VictimGuest come from the VMI object and introspection.
	VictimUID   types.UID
	VictimGuest []v1alpha1.GuestProgram
	// Suspects, highest score first.
	Suspects []v1alpha1.Suspect
	Score    float64
	Severity v1alpha1.Severity
	Evidence v1alpha1.Evidence
	// Time is when the detector emitted it, FirstSeen when its evidence
	// first crossed the threshold.
	Time      time.Time
	FirstSeen time.Time
	Policy    string
	// Forensics are the detector's figures for the evidence snapshot;
	// Snapshot, when set, is stored with the finding (internal/evidence)
	// when it is created and again when its severity rises.
	Forensics *evidence.Detector
	Snapshot  *evidence.Snapshot
}

// FindingOptions tune the finding writer. Zero values get defaults.
type FindingOptions struct {
	// Node is this agent's node; every finding is labelled with it.
	Node string
	// MinUpdateInterval is the least time between two writes of one
	// finding; detections in between are merged locally (default 10s).
	MinUpdateInterval time.Duration
	// WritesPerSecond and Burst bound all of this agent's finding writes
	// (default 2/s, burst 10): an attack that fires the detectors
	// continuously cannot flood the API server.
	WritesPerSecond float64
	Burst           int
	// MaxActive bounds the findings this agent keeps open (default 64);
	// detections about further victim+type pairs are dropped and counted.
	MaxActive int
	// Forget drops local state of a finding after this long without a
	// detection (default 1h); a later detection finds it again by label.
	Forget time.Duration
}

// FindingWriter turns detections into ThreatFindings: one per
// victim+type (on this node) while it is active, created on the first
// detection and updated by later ones (lastSeen, detections, score,
// suspects). Report never blocks on the API; Flush writes what is due.
type FindingWriter struct {
	c       client.Client
	log     logr.Logger
	clock   clock.PassiveClock
	opts    FindingOptions
	limiter *rate.Limiter

	mu      sync.Mutex
	entries map[findingKey]*entry
	stats   FindingStats
}

type findingKey struct {
	namespace, victim string
	typ               v1alpha1.ThreatType
}

// entry is what the writer knows of one finding.
type entry struct {
	key  findingKey
	name string
	// merged is the merge of every detection not yet written.
	merged  *Detection
	pending int64
	last    time.Time // last detection
	written time.Time // last write
	// evidence is a snapshot whose storing failed, to retry up to
	// maxEvidenceTries times.
	evidence      *evidence.Snapshot
	evidenceTries int
}

const maxEvidenceTries = 5

// FindingStats are the writer's totals.
type FindingStats struct {
	Detections, Created, Updated, Throttled, Dropped, Errors uint64
	// EvidenceSaved and EvidenceErrors count evidence snapshot writes.
	EvidenceSaved, EvidenceErrors uint64
}

// NewFindingWriter makes a writer.
func NewFindingWriter(c client.Client, log logr.Logger, clk clock.PassiveClock, opts FindingOptions) *FindingWriter {
	if opts.MinUpdateInterval <= 0 {
		opts.MinUpdateInterval = 10 * time.Second
	}
	if opts.WritesPerSecond <= 0 {
		opts.WritesPerSecond = 2
	}
	if opts.Burst <= 0 {
		opts.Burst = 10
	}
	if opts.MaxActive <= 0 {
		opts.MaxActive = 64
	}
	if opts.Forget <= 0 {
		opts.Forget = time.Hour
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &FindingWriter{
		c: c, log: log, clock: clk, opts: opts,
		limiter: rate.NewLimiter(rate.Limit(opts.WritesPerSecond), opts.Burst),
		entries: map[findingKey]*entry{},
	}
}

// Report merges a detection into the finding it belongs to.
func (w *FindingWriter) Report(d Detection) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats.Detections++
	k := findingKey{d.Victim.Namespace, d.Victim.Name, d.Type}
	e := w.entries[k]
	if e == nil {
		if len(w.entries) >= w.opts.MaxActive {
			w.stats.Dropped++
			return
		}
		e = &entry{key: k}
		w.entries[k] = e
	}
	e.last = w.clock.Now()
	e.pending++
	if e.merged == nil {
		dd := d
		e.merged = &dd
		return
	}
	mergeDetection(e.merged, d)
}

// mergeDetection folds d into m: the earliest first crossing, the latest
// time, the strongest evidence, every suspect with its best score.
func mergeDetection(m *Detection, d Detection) {
	if d.FirstSeen.Before(m.FirstSeen) {
		m.FirstSeen = d.FirstSeen
	}
	if d.Time.After(m.Time) {
		m.Time = d.Time
	}
	if d.Score >= m.Score {
		m.Score, m.Evidence, m.Detector = d.Score, d.Evidence, d.Detector
		if d.Snapshot != nil {
			m.Snapshot, m.Forensics = d.Snapshot, d.Forensics
		}
	}
	if d.Severity.Rank() > m.Severity.Rank() {
		m.Severity = d.Severity
	}
	m.Suspects = mergeSuspects(m.Suspects, d.Suspects)
	if len(d.VictimGuest) > 0 {
		m.VictimGuest = d.VictimGuest
	}
	if d.VictimUID != "" {
		m.VictimUID = d.VictimUID
	}
	if d.Policy != "" {
		m.Policy = d.Policy
	}
}

// maxSuspects is the schema's bound on spec.suspects.
const maxSuspects = 16

func mergeSuspects(a, b []v1alpha1.Suspect) []v1alpha1.Suspect {
	out := slices.Clone(a)
	for _, s := range b {
		i := slices.IndexFunc(out, func(o v1alpha1.Suspect) bool { return o.Namespace == s.Namespace && o.Name == s.Name })
		if i < 0 {
			out = append(out, s)
			continue
		}
		if s.Score > out[i].Score {
			out[i].Score = s.Score
			if s.Role != "" {
				out[i].Role = s.Role
			}
		}
		if len(s.Guest) > 0 {
			out[i].Guest = s.Guest
		}
		if s.UID != "" {
			out[i].UID = s.UID
		}
		if s.CoScheduling != nil {
			out[i].CoScheduling = s.CoScheduling // the latest window's
		}
	}
	slices.SortStableFunc(out, func(x, y v1alpha1.Suspect) int { return cmp.Compare(y.Score, x.Score) })
	if len(out) > maxSuspects {
		out = out[:maxSuspects]
	}
	return out
}

// Flush writes the findings that are due, within the rate limit: new
// findings first, then updates whose MinUpdateInterval has passed. What
// the limit does not allow now stays merged for a later Flush.
func (w *FindingWriter) Flush(ctx context.Context) error {
	now := w.clock.Now()
	w.mu.Lock()
	var due []*entry
	for k, e := range w.entries {
		switch {
		case e.pending > 0 && (e.name == "" || now.Sub(e.written) >= w.opts.MinUpdateInterval):
			due = append(due, e)
		case e.evidence != nil && e.name != "":
			due = append(due, e)
		case e.pending == 0 && now.Sub(e.last) >= w.opts.Forget:
			delete(w.entries, k)
		}
	}
	w.mu.Unlock()
	// Creates before updates; then the longest-waiting first.
	slices.SortFunc(due, func(a, b *entry) int {
		if (a.name == "") != (b.name == "") {
			if a.name == "" {
				return -1
			}
			return 1
		}
		return a.written.Compare(b.written)
	})
	var errs []error
	for _, e := range due {
		if !w.limiter.AllowN(now, 1) {
			w.mu.Lock()
			w.stats.Throttled++
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		retryOnly := e.pending == 0
		w.mu.Unlock()
		if retryOnly {
			w.retryEvidence(ctx, e)
			continue
		}
		if err := w.write(ctx, e, now); err != nil {
			w.mu.Lock()
			w.stats.Errors++
			w.mu.Unlock()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// write creates or updates e's finding. Concurrency: Flush runs from one
// goroutine; Report may run concurrently and only touches merged/pending
// under the lock.
func (w *FindingWriter) write(ctx context.Context, e *entry, now time.Time) error {
	w.mu.Lock()
	d := *e.merged
	d.Suspects = slices.Clone(d.Suspects)
	n := e.pending
	name := e.name
	w.mu.Unlock()

	var f *v1alpha1.ThreatFinding
	if name == "" {
		var err error
		if f, err = w.findActive(ctx, e.key); err != nil {
			return err
		}
	} else {
		f = &v1alpha1.ThreatFinding{}
		err := w.c.Get(ctx, client.ObjectKey{Namespace: e.key.namespace, Name: name}, f)
		switch {
		case apierrors.IsNotFound(err):
			f = nil
		case err != nil:
			return fmt.Errorf("report: get finding %s/%s: %w", e.key.namespace, name, err)
		case f.Status.Phase.Final():
			// Resolved (e.g. the victim was migrated away and came back):
			// new evidence opens a new finding.
			f = nil
		}
	}
	var err error
	created := f == nil
	rose := false
	if created {
		f, err = w.create(ctx, d, n)
	} else {
		rose, err = w.update(ctx, f, d, n)
	}
	if err != nil {
		return err
	}
	if d.Snapshot != nil && (created || rose) {
		w.saveEvidence(ctx, e, f, d.Snapshot)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	e.name, e.written = f.Name, now
	e.pending -= n
	if e.pending == 0 {
		e.merged = nil
	}
	// Otherwise detections arrived during the write: merged still holds
	// the written ones too, which is harmless (the merge keeps maxima and
	// unions) while pending counts only the new ones.
	if created {
		w.stats.Created++
		w.log.Info("created ThreatFinding", "finding", client.ObjectKeyFromObject(f), "type", d.Type, "victim", d.Victim, "score", d.Score)
	} else {
		w.stats.Updated++
		w.log.V(1).Info("updated ThreatFinding", "finding", client.ObjectKeyFromObject(f), "detections", f.Spec.Detections)
	}
	return nil
}

// saveEvidence stores a finding's evidence snapshot. A failure does not
// undo the finding (readers say the snapshot is missing); the snapshot is
// kept and stored at a later Flush.
func (w *FindingWriter) saveEvidence(ctx context.Context, e *entry, f *v1alpha1.ThreatFinding, s *evidence.Snapshot) {
	ref, err := evidence.Save(ctx, w.c, f, s)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.stats.EvidenceErrors++
		if e.evidence != s {
			e.evidence, e.evidenceTries = s, 0
		}
		e.evidenceTries++
		if e.evidenceTries >= maxEvidenceTries {
			e.evidence = nil
			w.log.Error(err, "storing the evidence snapshot failed; giving up", "finding", client.ObjectKeyFromObject(f), "tries", maxEvidenceTries)
			return
		}
		w.log.Error(err, "storing the evidence snapshot; will retry", "finding", client.ObjectKeyFromObject(f))
		return
	}
	w.stats.EvidenceSaved++
	if e.evidence == s {
		e.evidence, e.evidenceTries = nil, 0
	}
	w.log.V(1).Info("stored the evidence snapshot", "finding", client.ObjectKeyFromObject(f), "configMap", ref.ConfigMapName, "bytes", ref.Bytes, "trimmed", ref.Trimmed)
}

// retryEvidence stores a snapshot whose first attempt failed.
func (w *FindingWriter) retryEvidence(ctx context.Context, e *entry) {
	w.mu.Lock()
	s, name := e.evidence, e.name
	w.mu.Unlock()
	f := &v1alpha1.ThreatFinding{}
	if err := w.c.Get(ctx, client.ObjectKey{Namespace: e.key.namespace, Name: name}, f); err != nil {
		if apierrors.IsNotFound(err) {
			w.mu.Lock()
			e.evidence = nil // the finding is gone: nothing to attach it to
			w.mu.Unlock()
		}
		return
	}
	w.saveEvidence(ctx, e, f, s)
}

// findActive looks for an open finding of this node about the same
// victim and type (after an agent restart, or after Forget).
func (w *FindingWriter) findActive(ctx context.Context, k findingKey) (*v1alpha1.ThreatFinding, error) {
	var list v1alpha1.ThreatFindingList
	err := w.c.List(ctx, &list, client.InNamespace(k.namespace), client.MatchingLabels{
		v1alpha1.LabelNode:   w.opts.Node,
		v1alpha1.LabelVictim: LabelValue(k.victim),
		v1alpha1.LabelType:   string(k.typ),
	})
	if err != nil {
		return nil, fmt.Errorf("report: list findings of %s/%s: %w", k.namespace, k.victim, err)
	}
	var best *v1alpha1.ThreatFinding
	for i := range list.Items {
		f := &list.Items[i]
		if f.Status.Phase.Final() || f.Spec.Victim.Name != k.victim || f.Spec.Node != w.opts.Node {
			continue
		}
		if best == nil || f.CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = f
		}
	}
	return best, nil
}

func (w *FindingWriter) create(ctx context.Context, d Detection, n int64) (*v1alpha1.ThreatFinding, error) {
	f := &v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:    d.Victim.Namespace,
			GenerateName: generateName(d.Victim.Name, d.Type),
			Labels: map[string]string{
				v1alpha1.LabelNode:   w.opts.Node,
				v1alpha1.LabelVictim: LabelValue(d.Victim.Name),
				v1alpha1.LabelType:   string(d.Type),
			},
		},
		Spec: v1alpha1.ThreatFindingSpec{
			Node:       w.opts.Node,
			Type:       d.Type,
			Detector:   d.Detector,
			Severity:   severity(d),
			Score:      clamp01(d.Score),
			Victim:     v1alpha1.Victim{Name: d.Victim.Name, UID: d.VictimUID, Guest: d.VictimGuest},
			Suspects:   d.Suspects,
			Evidence:   d.Evidence,
			FirstSeen:  metav1.NewTime(d.FirstSeen),
			LastSeen:   metav1.NewTime(maxTime(d.Time, d.FirstSeen)),
			Detections: n,
			Policy:     d.Policy,
		},
	}
	if err := w.c.Create(ctx, f); err != nil {
		return nil, fmt.Errorf("report: create finding about %s (%s): %w", d.Victim, d.Type, err)
	}
	return f, nil
}

func (w *FindingWriter) update(ctx context.Context, f *v1alpha1.ThreatFinding, d Detection, n int64) (severityRose bool, err error) {
	before := f.DeepCopy()
	s := &f.Spec
	if t := metav1.NewTime(d.Time); t.After(s.LastSeen.Time) {
		s.LastSeen = t
	}
	s.Detections += n
	if d.Score > s.Score {
		s.Score, s.Evidence = clamp01(d.Score), d.Evidence
		if d.Detector != "" {
			s.Detector = d.Detector
		}
	}
	if sev := severity(d); sev.Rank() > s.Severity.Rank() {
		s.Severity, severityRose = sev, true
	}
	s.Suspects = mergeSuspects(s.Suspects, d.Suspects)
	if len(d.VictimGuest) > 0 {
		s.Victim.Guest = d.VictimGuest
	}
	if s.Victim.UID == "" {
		s.Victim.UID = d.VictimUID
	}
	// The spec is the agent's alone: an optimistic lock only guards
	// against two writers of one agent, which cannot happen; a plain
	// merge patch keeps the operator's concurrent status writes out of
	// the way.
	if err := w.c.Patch(ctx, f, client.MergeFrom(before)); err != nil {
		return false, fmt.Errorf("report: update finding %s/%s: %w", f.Namespace, f.Name, err)
	}
	return severityRose, nil
}

// Stats returns the writer's totals.
func (w *FindingWriter) Stats() FindingStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// Active is how many findings the writer is following.
func (w *FindingWriter) Active() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.entries)
}

func severity(d Detection) v1alpha1.Severity {
	if d.Severity.Rank() > 0 {
		return d.Severity
	}
	return v1alpha1.SeverityForScore(d.Score)
}

func clamp01(x float64) float64 { return max(0, min(1, x)) }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// LabelValue makes a VMI name usable as a label value: names of up to 63
// label-safe characters are used as they are; longer ones are cut and
// suffixed with a hash so distinct names stay distinct.
func LabelValue(name string) string {
	if len(validation.IsValidLabelValue(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:])[:10]
	cut := strings.TrimRight(name[:min(len(name), 52)], "-_.")
	return cut + "-" + h
}

// generateName is the finding name prefix: victim and type, short enough
// for the API server's random suffix.
func generateName(victim string, t v1alpha1.ThreatType) string {
	short := map[v1alpha1.ThreatType]string{
		v1alpha1.CacheCovertChannel:   "cache-covert",
		v1alpha1.CacheSideChannel:     "cache-side",
		v1alpha1.BusLockCovertChannel: "buslock-covert",
	}[t]
	if short == "" {
		short = strings.ToLower(string(t))
	}
	v := strings.Trim(victim[:min(len(victim), 200)], "-.")
	return v + "-" + short + "-"
}
