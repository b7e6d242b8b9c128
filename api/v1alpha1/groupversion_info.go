// Package v1alpha1 contains the sidewatch.io/v1alpha1 API: SideChannelPolicy,
// which says which KubeVirt VirtualMachineInstances (VMIs) are protected and
// how, and ThreatFinding, which a node agent writes when it sees a cross-VM
// side-channel or covert-channel attack and the operator acts upon.
//
// +kubebuilder:object:generate=true
// +groupName=sidewatch.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the sidewatch API.
	GroupVersion = schema.GroupVersion{Group: "sidewatch.io", Version: "v1alpha1"}

	// SchemeBuilder registers the sidewatch types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the sidewatch types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
