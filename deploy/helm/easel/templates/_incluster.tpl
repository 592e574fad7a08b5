{{/*
StatefulSet + Service + NetworkPolicy of one in-cluster dependency (evaluation only):
(dict "root" $ "component" "postgres" "dep" <values> "uid" 70 "dataPath" "/data" "ports" <list>
      "env" <list> "probes" <dict> "callers" <components that may connect> ...)
*/}}
{{- define "easel.depStatefulSet" -}}
{{- $root := .root -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $ids := dict "uid" .uid "gid" .uid "fsGroup" .uid -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ include "easel.componentName" $ctx }}
  labels:
    {{- include "easel.labels" $ctx | nindent 4 }}
spec:
  serviceName: {{ include "easel.componentName" $ctx }}
  replicas: 1
  selector:
    matchLabels:
      {{- include "easel.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "easel.labels" $ctx | nindent 8 }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      {{- include "easel.podSecurityContext" $ids | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ .dep.image }}
          imagePullPolicy: IfNotPresent
          {{- with .command }}
          command:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            {{- toYaml .ports | nindent 12 }}
          {{- with .env }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- toYaml .probes | nindent 10 }}
          resources:
            {{- toYaml .dep.resources | nindent 12 }}
          {{- include "easel.containerSecurityContext" $ids | nindent 10 }}
          volumeMounts:
            - name: data
              mountPath: {{ .dataPath }}
            - name: tmp
              mountPath: /tmp
            {{- with .extraMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "easel.tmpVolume" dict | nindent 8 }}
        {{- with .extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        {{- with .dep.storage.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .dep.storage.size }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "easel.componentName" $ctx }}
  labels:
    {{- include "easel.labels" $ctx | nindent 4 }}
spec:
  selector:
    {{- include "easel.selectorLabels" $ctx | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .containerPort }}
      targetPort: {{ .name }}
      protocol: TCP
    {{- end }}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "easel.componentName" $ctx }}
  labels:
    {{- include "easel.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "easel.selectorLabels" $ctx | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    - ports:
        - {port: {{ (index .ports 0).containerPort }}, protocol: TCP}
      from:
        {{- range .callers }}
        - podSelector:
            matchLabels:
              {{- include "easel.selectorLabels" (dict "root" $root "component" .) | nindent 14 }}
        {{- end }}
    {{- with .openPorts }}
    # Read by operators outside the namespace (e.g. the KEDA scaler reads NATS monitoring).
    - ports:
        {{- range . }}
        - {port: {{ . }}, protocol: TCP}
        {{- end }}
    {{- end }}
  egress: []
{{- end }}
{{- end -}}
