package evidence

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Names on the evidence ConfigMap and its finding.
const (
	// DataKey is the binaryData key holding the gzip-compressed snapshot.
	DataKey = "snapshot.json.gz"
	// AnnotationRef on a ThreatFinding holds a v1alpha1.EvidenceSnapshotRef
	// as JSON. The agent writes it (RecordRef), since it cannot write
	// status; the operator validates it (RefFromAnnotation) and copies it
	// into status.evidence.
	AnnotationRef = "sidewatch.io/evidence"
	// AnnotationFormat, AnnotationCapturedAt and AnnotationTrimmed on the
	// ConfigMap tell a kubectl user what it holds without decoding it.
	AnnotationFormat     = "sidewatch.io/evidence-format"
	AnnotationCapturedAt = "sidewatch.io/captured-at"
	AnnotationTrimmed    = "sidewatch.io/trimmed"
	// LabelComponent marks evidence ConfigMaps: app.kubernetes.io/component=evidence.
	LabelComponent = "app.kubernetes.io/component"
	ComponentValue = "evidence"

	nameSuffix = "-evidence"
)

// ErrNotFound is returned by Load when the finding has no snapshot.
var ErrNotFound = errors.New("no evidence snapshot")

// ConfigMapName is the name of the evidence ConfigMap of the finding called
// finding: "<finding>-evidence", or for names too long for that, the name cut
// short with a hash of the whole name, so it stays unique and
// deterministic.
func ConfigMapName(finding string) string {
	const maxName = 253
	if len(finding)+len(nameSuffix) <= maxName {
		return finding + nameSuffix
	}
	return shorten(finding, maxName-len(nameSuffix)) + nameSuffix
}

// FindingLabelValue is the value of the sidewatch.io/finding label for a
// finding name: the name itself, or when longer than a label value may be
// (63), its start and a hash of the whole name.
func FindingLabelValue(finding string) string {
	const maxLabel = 63
	if len(finding) <= maxLabel {
		return finding
	}
	return shorten(finding, maxLabel)
}

// shorten cuts s to n bytes ending in "-" and ten hex digits of its hash,
// keeping the result a valid DNS subdomain and label value.
func shorten(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	h := hex.EncodeToString(sum[:5])
	head := strings.TrimRight(s[:n-len(h)-1], ".-")
	return head + "-" + h
}

// Store encodes s (see Encode) and writes it into the evidence ConfigMap of
// finding f, creating it or replacing its content, and returns the
// reference to record with RecordRef.
//
// f must be the finding as the API returned it (with its UID): the
// ConfigMap gets an ownerReference to it, so the garbage collector deletes
// the ConfigMap with the finding. blockOwnerDeletion is false: with true,
// the API server would require the writer to be allowed to update the
// finding's finalizers, which the agent is not. The ConfigMap is labelled
// sidewatch.io/node=<spec.node> (the admission policy requires it of agent
// writes) and sidewatch.io/finding=<name>. s.Finding is filled from f;
// s.Onset defaults to spec.firstSeen.
func Store(ctx context.Context, c client.Client, f *v1alpha1.ThreatFinding, s *Snapshot) (v1alpha1.EvidenceSnapshotRef, error) {
	var ref v1alpha1.EvidenceSnapshotRef
	if err := checkFinding(f); err != nil {
		return ref, err
	}
	if s == nil {
		return ref, errors.New("evidence: nil snapshot")
	}
	if s.CapturedAt.IsZero() {
		return ref, fmt.Errorf("evidence: snapshot of %s/%s has no capturedAt: set it to the capture time", f.Namespace, f.Name)
	}
	in := *s
	in.Finding = FindingRef{
		Namespace: f.Namespace, Name: f.Name, UID: f.UID, Type: f.Spec.Type, Node: f.Spec.Node,
		Detector: f.Spec.Detector, Severity: f.Spec.Severity, Score: f.Spec.Score,
	}
	if in.Onset.IsZero() {
		in.Onset = f.Spec.FirstSeen.Time
	}
	data, stored, err := Encode(&in)
	if err != nil {
		return ref, err
	}

	name := ConfigMapName(f.Name)
	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: f.Namespace,
			Name:      name,
			Labels: map[string]string{
				v1alpha1.LabelNode:    f.Spec.Node,
				v1alpha1.LabelFinding: FindingLabelValue(f.Name),
				LabelComponent:        ComponentValue,
			},
			Annotations: map[string]string{
				AnnotationFormat:     fmt.Sprintf("%s/v%d", Format, Version),
				AnnotationCapturedAt: stored.CapturedAt.UTC().Format(time.RFC3339Nano),
			},
			OwnerReferences: []metav1.OwnerReference{ownerRef(f)},
		},
		BinaryData: map[string][]byte{DataKey: data},
	}
	if t := stored.TrimmedSummary(); t != "" {
		want.Annotations[AnnotationTrimmed] = t
	}

	err = c.Create(ctx, want)
	if apierrors.IsAlreadyExists(err) {
		// The agent refreshes the snapshot when the finding's severity
		// rises: replace the content, keep what others added.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var cm corev1.ConfigMap
			if err := c.Get(ctx, client.ObjectKeyFromObject(want), &cm); err != nil {
				return err
			}
			if _, ok := cm.Labels[v1alpha1.LabelFinding]; !ok {
				return fmt.Errorf("ConfigMap %s/%s exists but is not an evidence snapshot (no label %s): rename or delete it", cm.Namespace, cm.Name, v1alpha1.LabelFinding)
			}
			if cm.Labels == nil {
				cm.Labels = map[string]string{}
			}
			for k, v := range want.Labels {
				cm.Labels[k] = v
			}
			if cm.Annotations == nil {
				cm.Annotations = map[string]string{}
			}
			delete(cm.Annotations, AnnotationTrimmed)
			for k, v := range want.Annotations {
				cm.Annotations[k] = v
			}
			// A finding re-created under the same name owns the snapshot
			// now; references to other owners stay.
			owners := []metav1.OwnerReference{ownerRef(f)}
			for _, o := range cm.OwnerReferences {
				if !(o.Kind == "ThreatFinding" && strings.HasPrefix(o.APIVersion, v1alpha1.GroupVersion.Group+"/")) {
					owners = append(owners, o)
				}
			}
			cm.OwnerReferences = owners
			cm.Data = nil
			cm.BinaryData = want.BinaryData
			return c.Update(ctx, &cm)
		})
	}
	if err != nil {
		return ref, fmt.Errorf("evidence: store ConfigMap %s/%s: %w", f.Namespace, name, err)
	}
	ref = v1alpha1.EvidenceSnapshotRef{
		ConfigMapName: name,
		Bytes:         int64(len(data)),
		Trimmed:       stored.TrimmedSummary(),
		// Seconds, as the API stores a metav1.Time; the snapshot keeps
		// the exact time.
		CapturedAt: ptr.To(metav1.NewTime(stored.CapturedAt.Truncate(time.Second))),
	}
	return ref, nil
}

func checkFinding(f *v1alpha1.ThreatFinding) error {
	switch {
	case f == nil:
		return errors.New("evidence: nil finding")
	case f.Name == "" || f.Namespace == "":
		return errors.New("evidence: the finding has no name or namespace")
	case f.UID == "":
		return fmt.Errorf("evidence: finding %s/%s has no uid: pass the finding as Create or Get returned it", f.Namespace, f.Name)
	case f.Spec.Node == "":
		return fmt.Errorf("evidence: finding %s/%s has no spec.node", f.Namespace, f.Name)
	}
	return nil
}

func ownerRef(f *v1alpha1.ThreatFinding) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         v1alpha1.GroupVersion.String(),
		Kind:               "ThreatFinding",
		Name:               f.Name,
		UID:                f.UID,
		Controller:         ptr.To(true),
		BlockOwnerDeletion: ptr.To(false),
	}
}

// RecordRef writes ref into the finding's AnnotationRef annotation with a
// merge patch (the agent may patch findings but not their status); the
// operator copies it into status.evidence. f is updated from the response.
func RecordRef(ctx context.Context, c client.Client, f *v1alpha1.ThreatFinding, ref v1alpha1.EvidenceSnapshotRef) error {
	value, err := json.Marshal(ref)
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	before := f.DeepCopy()
	if f.Annotations == nil {
		f.Annotations = map[string]string{}
	}
	f.Annotations[AnnotationRef] = string(value)
	if err := c.Patch(ctx, f, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("evidence: annotate finding %s/%s: %w", f.Namespace, f.Name, err)
	}
	return nil
}

// Save stores the snapshot (Store) and records its reference on the finding
// (RecordRef): the one call the agent makes when it creates a finding or
// raises its severity.
func Save(ctx context.Context, c client.Client, f *v1alpha1.ThreatFinding, s *Snapshot) (v1alpha1.EvidenceSnapshotRef, error) {
	ref, err := Store(ctx, c, f, s)
	if err != nil {
		return ref, err
	}
	return ref, RecordRef(ctx, c, f, ref)
}

// RefFromAnnotation reads and checks the reference the agent recorded on the
// finding; nil without error when there is none. The operator copies a
// reference it returns into status.evidence. It refuses a reference that
// names another ConfigMap than ConfigMapName(finding), a size beyond the
// limit, an over-long trimming note or no capture time.
func RefFromAnnotation(f *v1alpha1.ThreatFinding) (*v1alpha1.EvidenceSnapshotRef, error) {
	raw, ok := f.Annotations[AnnotationRef]
	if !ok {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	var ref v1alpha1.EvidenceSnapshotRef
	if err := dec.Decode(&ref); err != nil {
		return nil, fmt.Errorf("annotation %s on %s/%s: want an EvidenceSnapshotRef as JSON: %w", AnnotationRef, f.Namespace, f.Name, err)
	}
	want := ConfigMapName(f.Name)
	switch {
	case ref.ConfigMapName != want:
		return nil, fmt.Errorf("annotation %s on %s/%s: configMapName is %q, want %q", AnnotationRef, f.Namespace, f.Name, clampString(ref.ConfigMapName, 300), want)
	case ref.Bytes < 1 || ref.Bytes > MaxCompressedBytes:
		return nil, fmt.Errorf("annotation %s on %s/%s: bytes is %d, want 1..%d", AnnotationRef, f.Namespace, f.Name, ref.Bytes, MaxCompressedBytes)
	case len(ref.Trimmed) > MaxRefTrimmed:
		return nil, fmt.Errorf("annotation %s on %s/%s: trimmed is %d bytes long, the limit is %d", AnnotationRef, f.Namespace, f.Name, len(ref.Trimmed), MaxRefTrimmed)
	case ref.CapturedAt == nil:
		return nil, fmt.Errorf("annotation %s on %s/%s: capturedAt is missing", AnnotationRef, f.Namespace, f.Name)
	}
	return &ref, nil
}

// Load reads the evidence snapshot of finding f back: from the ConfigMap
// that status.evidence names, else the one the agent's annotation names,
// else ConfigMapName(f.Name). The ConfigMap must be owned by f (same UID),
// so a snapshot left by an earlier finding of the same name is never shown
// as this one's. It returns an error wrapping ErrNotFound when there is no
// snapshot.
func Load(ctx context.Context, c client.Reader, f *v1alpha1.ThreatFinding) (*Snapshot, *corev1.ConfigMap, error) {
	name := ConfigMapName(f.Name)
	if f.Status.Evidence != nil && f.Status.Evidence.ConfigMapName != "" {
		name = f.Status.Evidence.ConfigMapName
	} else if ref, err := RefFromAnnotation(f); err == nil && ref != nil {
		name = ref.ConfigMapName
	}
	var cm corev1.ConfigMap
	if err := c.Get(ctx, client.ObjectKey{Namespace: f.Namespace, Name: name}, &cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, fmt.Errorf("finding %s/%s: %w (ConfigMap %s not found)", f.Namespace, f.Name, ErrNotFound, name)
		}
		return nil, nil, fmt.Errorf("finding %s/%s: read evidence ConfigMap %s: %w", f.Namespace, f.Name, name, err)
	}
	if f.UID != "" && !ownedBy(&cm, f) {
		return nil, &cm, fmt.Errorf("finding %s/%s: ConfigMap %s is not owned by this finding (uid %s): it belongs to an earlier finding of the same name or was not written by sidewatch", f.Namespace, f.Name, name, f.UID)
	}
	s, err := FromConfigMap(&cm)
	if err != nil {
		return nil, &cm, err
	}
	if f.UID != "" && s.Finding.UID != "" && s.Finding.UID != f.UID {
		return nil, &cm, fmt.Errorf("finding %s/%s: the snapshot in ConfigMap %s names finding uid %s, not %s", f.Namespace, f.Name, name, s.Finding.UID, f.UID)
	}
	return s, &cm, nil
}

func ownedBy(cm *corev1.ConfigMap, f *v1alpha1.ThreatFinding) bool {
	for _, o := range cm.OwnerReferences {
		if o.UID == f.UID && o.Kind == "ThreatFinding" {
			return true
		}
	}
	return false
}

// FromConfigMap decodes the snapshot an evidence ConfigMap holds.
func FromConfigMap(cm *corev1.ConfigMap) (*Snapshot, error) {
	data, ok := cm.BinaryData[DataKey]
	if !ok {
		return nil, fmt.Errorf("evidence: ConfigMap %s/%s has no binaryData key %s", cm.Namespace, cm.Name, DataKey)
	}
	s, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return s, nil
}

// ParseFile reads a snapshot saved to a file in any of the forms a
// responder has at hand: the gzip data itself (binaryData extracted with
// base64 -d), its decompressed JSON, or the ConfigMap saved with
// `kubectl get configmap NAME -o yaml` (or -o json).
func ParseFile(data []byte) (*Snapshot, error) {
	if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		return Decode(data)
	}
	if len(data) > 2*MaxJSONBytes {
		return nil, fmt.Errorf("evidence: %w: the file has %d bytes", errTooLarge, len(data))
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("evidence: neither gzip, JSON nor YAML: %w", err)
	}
	var head struct {
		Kind   string `json:"kind"`
		Format string `json:"format"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, fmt.Errorf("evidence: not a JSON object: %w", err)
	}
	switch {
	case head.Kind == "ConfigMap":
		var cm corev1.ConfigMap
		if err := json.Unmarshal(js, &cm); err != nil {
			return nil, fmt.Errorf("evidence: ConfigMap: %w", err)
		}
		return FromConfigMap(&cm)
	case head.Format == Format:
		return DecodeJSON(bytes.TrimSpace(js))
	case head.Kind != "":
		return nil, fmt.Errorf("evidence: the file holds a %s, want the evidence ConfigMap (kubectl get configmap <finding>%s -o yaml) or the snapshot itself", clampString(head.Kind, 80), nameSuffix)
	}
	return nil, fmt.Errorf("evidence: the file is not a snapshot (no \"format\": %q)", Format)
}
