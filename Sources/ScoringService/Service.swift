import Hummingbird
import Scoring
