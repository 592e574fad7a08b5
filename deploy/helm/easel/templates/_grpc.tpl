{{/*
Deployment + Service of a gRPC service (auth, gallery, inference api):
(dict "root" $ "c" <values> "component" "auth" "env" <dict> "secrets" <list of EnvVar>
      "models" <bool: mount the model volume read-only> "waitForModels" <bool: wait for the manifests>)
Probes are Kubernetes' native gRPC probes against the standard gRPC health service.
*/}}
{{- define "easel.grpcService" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- $ctx := dict "root" $root "c" $c "component" .component -}}
{{- $ids := include "easel.ids" $root | fromJson -}}
{{- $env := merge (dict
    "EASEL_GRPC_HOST" "0.0.0.0"
    "EASEL_GRPC_PORT" (toString $c.grpcPort)
    "EASEL_METRICS_HOST" "0.0.0.0"
    "EASEL_METRICS_PORT" (toString $c.metricsPort)
  ) .env -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "easel.componentName" $ctx }}
  labels:
    {{- include "easel.labels" $ctx | nindent 4 }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "easel.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 25%
  template:
    metadata:
      labels:
        {{- include "easel.podLabels" $ctx | nindent 8 }}
      annotations:
        {{- include "easel.podAnnotations" $ctx | nindent 8 }}
    spec:
      serviceAccountName: {{ include "easel.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with include "easel.imagePullSecrets" $root }}{{ . | nindent 6 }}{{- end }}
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      {{- include "easel.podSecurityContext" $ids | nindent 6 }}
      {{- with include "easel.scheduling" $ctx | trim }}{{ . | nindent 6 }}{{- end }}
      {{- if and .models .waitForModels }}
      initContainers:
        {{- include "easel.waitForModels" (dict "root" $root "image" (include "easel.image" (dict "root" $root "image" $c.image))) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "easel.image" (dict "root" $root "image" $c.image) }}
          imagePullPolicy: {{ $root.Values.global.imagePullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $c.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $c.metricsPort }}
              protocol: TCP
          {{- include "easel.env" (dict "root" $root "c" $c "env" $env "secrets" .secrets) | nindent 10 }}
          startupProbe:
            grpc: {port: {{ $c.grpcPort }}}
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            grpc: {port: {{ $c.grpcPort }}}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 6
          readinessProbe:
            grpc: {port: {{ $c.grpcPort }}}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          {{- include "easel.containerSecurityContext" $ids | nindent 10 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .models }}
            - name: models
              mountPath: {{ $root.Values.models.mountPath }}
              readOnly: true
            {{- end }}
      volumes:
        {{- include "easel.tmpVolume" dict | nindent 8 }}
        {{- if .models }}
        {{- include "easel.modelsVolume" $root | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "easel.componentName" $ctx }}
  labels:
    {{- include "easel.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "easel.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $c.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $c.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end -}}
