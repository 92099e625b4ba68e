import type { EvaluationContext, JsonValue, OpenFeatureEventEmitter, Provider, ResolutionDetails, TrackingEventDetails } from '@openfeature/web-sdk';
import type { AbxClient } from '../index.js';

/** OpenFeature (web SDK) over an `AbxClient`; the targeting key is the unit. */
export declare class AbxWebProvider implements Provider {
  constructor(client: AbxClient, options?: { unitAttribute?: string });
  readonly runsOn: 'client';
  readonly metadata: { name: 'abx' };
  readonly events: OpenFeatureEventEmitter;
  readonly hooks: [];
  initialize(): Promise<void>;
  onClose(): Promise<void>;
  resolveBooleanEvaluation(flagKey: string, defaultValue: boolean, context: EvaluationContext): ResolutionDetails<boolean>;
  resolveStringEvaluation(flagKey: string, defaultValue: string, context: EvaluationContext): ResolutionDetails<string>;
  resolveNumberEvaluation(flagKey: string, defaultValue: number, context: EvaluationContext): ResolutionDetails<number>;
  resolveObjectEvaluation<T extends JsonValue>(flagKey: string, defaultValue: T, context: EvaluationContext): ResolutionDetails<T>;
  track(trackingEventName: string, context: EvaluationContext, trackingEventDetails: TrackingEventDetails): void;
}
