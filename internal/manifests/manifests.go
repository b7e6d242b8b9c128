// Package manifests builds the kustomize trees under config/ and applies
// them to a cluster with server-side apply, for tests and the demo.
package manifests

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Build runs kustomize on dir and returns the objects it renders.
func Build(dir string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("manifests: kustomize %s: %w", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range res.Resources() {
		// Through JSON, so numbers become the int64/float64 that
		// unstructured helpers expect (kustomize yields plain ints).
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("manifests: %s: %w", r.CurId(), err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("manifests: %s: %w", r.CurId(), err)
		}
		out = append(out, u)
	}
	return out, nil
}

// Decode splits a multi-document YAML stream (e.g. `helm template` output)
// into objects, skipping empty documents.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for i, doc := range splitDocuments(data) {
		data, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("manifests: document %d: %w", i+1, err)
		}
		if s := string(data); s == "null" || s == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("manifests: document %d: %w", i+1, err)
		}
		out = append(out, u)
	}
	return out, nil
}

func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	start := 0
	for i := 0; i <= len(data); i++ {
		atLineStart := i == 0 || data[i-1] == '\n'
		if i == len(data) || (atLineStart && hasSeparator(data[i:])) {
			docs = append(docs, data[start:i])
			if i == len(data) {
				break
			}
			for i < len(data) && data[i] != '\n' {
				i++
			}
			start = i + 1
		}
	}
	return docs
}

func hasSeparator(b []byte) bool {
	if len(b) < 3 || string(b[:3]) != "---" {
		return false
	}
	return len(b) == 3 || b[3] == '\n' || b[3] == '\r' || b[3] == ' '
}

// kindOrder applies cluster-scoped foundations before what depends on them.
var kindOrder = map[string]int{
	"CustomResourceDefinition": 0,
	"Namespace":                1,
	"ServiceAccount":           2,
	"ClusterRole":              3,
	"Role":                     3,
	"ClusterRoleBinding":       4,
	"RoleBinding":              4,
	"ConfigMap":                5,
	"Secret":                   5,
	"Service":                  6,
}

// Sort orders objects so that applying them in order succeeds.
func Sort(objs []*unstructured.Unstructured) {
	rank := func(o *unstructured.Unstructured) int {
		if r, ok := kindOrder[o.GetKind()]; ok {
			return r
		}
		return 10
	}
	sort.SliceStable(objs, func(i, j int) bool { return rank(objs[i]) < rank(objs[j]) })
}

// Options tune Apply.
type Options struct {
	// FieldOwner names the applier (default "sidewatch-manifests").
	FieldOwner string
	// DryRun asks the server to validate without persisting.
	DryRun bool
	// Skip leaves out objects for which it returns true.
	Skip func(*unstructured.Unstructured) bool
}

// Apply server-side applies objs in dependency order.
func Apply(ctx context.Context, c client.Client, objs []*unstructured.Unstructured, opts Options) error {
	owner := opts.FieldOwner
	if owner == "" {
		owner = "sidewatch-manifests"
	}
	sorted := append([]*unstructured.Unstructured(nil), objs...)
	Sort(sorted)
	for _, o := range sorted {
		if opts.Skip != nil && opts.Skip(o) {
			continue
		}
		o = o.DeepCopy()
		o.SetResourceVersion("")
		applyOpts := []client.ApplyOption{client.FieldOwner(owner), client.ForceOwnership}
		if opts.DryRun {
			applyOpts = append(applyOpts, client.DryRunAll)
		}
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), applyOpts...); err != nil {
			return fmt.Errorf("manifests: apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	return nil
}
