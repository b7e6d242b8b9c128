package stix

import (
	"bytes"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// ParseFindings reads findings saved by `kubectl get threatfindings -o yaml`
// (or -o json): a List, a ThreatFindingList, a single ThreatFinding, or
// several YAML documents of those.
func ParseFindings(data []byte) ([]v1alpha1.ThreatFinding, error) {
	var out []v1alpha1.ThreatFinding
	for i, doc := range bytes.Split(data, []byte("\n---")) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: not YAML or JSON: %w", i+1, err)
		}
		if s := string(bytes.TrimSpace(js)); s == "null" || s == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		items := []unstructured.Unstructured{*u}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", i+1, err)
			}
			items = list.Items
		}
		for j, item := range items {
			gvk := item.GroupVersionKind()
			if gvk.Group != v1alpha1.GroupVersion.Group || gvk.Kind != "ThreatFinding" {
				return nil, fmt.Errorf("document %d item %d: %s %q is not a ThreatFinding (apiVersion sidewatch.io/v1alpha1)", i+1, j+1, gvk.Kind, item.GetName())
			}
			var f v1alpha1.ThreatFinding
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(item.Object, &f); err != nil {
				return nil, fmt.Errorf("document %d item %d (%s): %w", i+1, j+1, item.GetName(), err)
			}
			out = append(out, f)
		}
	}
	return out, nil
}
